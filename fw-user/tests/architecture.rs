//! The structure is part of the design: the policy core (src/policy/)
//! stays pure, so it can be read, tested and reused without root, a kernel
//! or a runtime. This test reads its sources and fails on any import of
//! the kernel crates, the async runtime, libc, or another part of fw.

use std::{fs, path::Path};

/// Crates the policy core must not use.
const FORBIDDEN_CRATES: [&str; 4] = ["aya", "aya_log", "tokio", "libc"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of code (comments dropped) that name `what` as a path root.
fn uses(text: &str, what: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .filter(|l| {
            l.match_indices(&format!("{what}::"))
                .any(|(i, _)| i == 0 || !l[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':'))
                || l.contains(&format!("extern crate {what}"))
        })
        .map(str::to_string)
        .collect()
}

/// The first segment of every `crate::` path in `text`, groups expanded
/// (`crate::{policy::ir, kernel}` gives `policy` and `kernel`).
fn crate_roots(text: &str) -> Vec<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut roots = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        roots.push(group[start..i].trim().to_string());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        roots.push(group[start..i].trim().to_string());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            roots.push(after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
        rest = after;
    }
    roots
        .into_iter()
        .map(|r| r.split("::").next().unwrap_or_default().trim().to_string())
        .filter(|r| !r.is_empty())
        .collect()
}

#[test]
fn the_policy_core_depends_on_no_kernel_runtime_or_libc() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(files.len() > 10, "the policy core has moved: {files:?}");
    let mut offences = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for krate in FORBIDDEN_CRATES {
            offences.extend(uses(&text, krate).into_iter().map(|l| format!("{}: {}", file.display(), l.trim())));
        }
        // Only the core itself: not the kernel, instance, daemon or CLI.
        for root in crate_roots(&text) {
            if root != "policy" {
                offences.push(format!("{}: crate::{root}", file.display()));
            }
        }
    }
    assert!(offences.is_empty(), "the policy core reaches outside itself:\n{}", offences.join("\n"));
}

#[test]
fn the_check_sees_what_it_forbids() {
    assert_eq!(uses("use aya::maps::Array;", "aya").len(), 1);
    assert_eq!(uses("    let x = libc::geteuid();", "libc").len(), 1);
    assert!(uses("use fw_common::maps; // aya:: in a comment", "aya").is_empty());
    assert!(uses("use my_aya::x;", "aya").is_empty());
    assert_eq!(crate_roots("use crate::{\n    policy::ir,\n    kernel::loader::{self, X},\n};"), ["policy", "kernel"]);
    assert_eq!(crate_roots("let x = crate::unix_now(); // crate::kernel"), ["unix_now"]);
}
