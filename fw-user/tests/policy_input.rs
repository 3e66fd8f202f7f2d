//! What a policy (or env) file may be before its text means anything: a
//! regular file under the size limit, read without ever blocking; one YAML
//! document; a UTF-8 BOM skipped; addresses only in forms that mean one
//! thing (a name that looks like a number never reaches the resolver); the
//! path recorded absolute and canonical.

use std::{
    cell::RefCell,
    ffi::CString,
    net::IpAddr,
    os::unix::ffi::OsStrExt as _,
    path::{Component, Path, PathBuf},
    rc::Rc,
    sync::mpsc,
    time::Duration,
};

use fw_user::{
    policy::{parse_str_with_resolver, ErrorKind, PolicyError, Vars},
    source::{self, PolicyText},
};

const POLICY: &str =
    "name: t\nphases:\n  runtime:\n    egress:\n      - { name: a, to: [203.0.113.1], proto: tcp, ports: [443] }\n";

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Runs `read` on a thread and returns its error message; fails the test if
/// it does not return within 20 s (a FIFO without a writer blocks an
/// open() forever) instead of hanging the suite. `fifo` is then opened for
/// writing, which releases the blocked reader.
fn error_without_blocking(fifo: &Path, read: fn(PathBuf) -> Result<(), String>) -> String {
    let (tx, rx) = mpsc::channel();
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(read(path));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => panic!("reading the FIFO {} succeeded", fifo.display()),
        Ok(Err(message)) => message,
        Err(_) => {
            let _ = std::fs::OpenOptions::new().write(true).open(fifo);
            panic!("reading the FIFO {} blocked (it has no writer)", fifo.display());
        }
    }
}

#[test]
fn finding12_a_fifo_as_policy_or_env_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("policy.yaml");
    mkfifo(&fifo);
    let via_cli = error_without_blocking(&fifo, |p| {
        PolicyText::resolve(p.to_str().unwrap()).map(|_| ()).map_err(|e| format!("{e:#}"))
    });
    assert!(via_cli.contains("policy.yaml") && via_cli.contains("not a regular file"), "{via_cli}");
    let via_library = error_without_blocking(&fifo, |p| {
        fw_user::source::file::load_policy_file(&p, &Vars::from_pairs::<&str, &str>([]))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(via_library.contains("not a regular file"), "{via_library}");
    let env = error_without_blocking(&fifo, |p| {
        fw_user::source::file::env_vars(Some(&p)).map(|_| ()).map_err(|e| e.to_string())
    });
    assert!(env.contains("not a regular file"), "{env}");
}

#[test]
fn finding12_a_device_or_an_oversized_file_is_refused_before_reading() {
    // /dev/zero used to be read until memory ran out.
    let e = PolicyText::resolve("/dev/zero").err().expect("/dev/zero accepted");
    let message = format!("{e:#}");
    assert!(message.contains("/dev/zero") && message.contains("not a regular file"), "{message}");
    let e = fw_user::source::file::env_vars(Some(Path::new("/dev/zero"))).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    // A sparse file one byte over the limit: refused from its size alone.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big).unwrap().set_len(64 * 1024 * 1024 + 1).unwrap();
    let e = PolicyText::resolve(big.to_str().unwrap()).err().expect("a 64 MiB + 1 file accepted");
    let message = format!("{e:#}");
    assert!(message.contains("big.yaml") && message.contains("larger than 64 MiB"), "{message}");
    let e = fw_user::source::file::env_vars(Some(&big)).unwrap_err();
    assert!(e.to_string().contains("larger than 64 MiB"), "{e}");
}

/// Loads `yaml` with a resolver that resolves every name (so that nothing
/// fails for lack of DNS) and records the names it was asked.
fn load_recording(yaml: &str, vars: &Vars) -> (Result<fw_user::policy::LoadedPolicy, PolicyError>, Vec<String>) {
    let asked = Rc::new(RefCell::new(Vec::new()));
    let record = Rc::clone(&asked);
    let resolve = move |host: &str| -> Result<Vec<IpAddr>, String> {
        record.borrow_mut().push(host.to_string());
        Ok(vec!["203.0.113.66".parse().unwrap()])
    };
    let result = parse_str_with_resolver(yaml, "x.yaml", vars, &resolve);
    let asked = asked.borrow().clone();
    (result, asked)
}

fn egress_to(entry: &str) -> String {
    format!("name: t\nphases:\n  runtime:\n    egress:\n      - name: a\n        to: [\"{entry}\"]\n        proto: tcp\n        ports: [443]\n")
}

#[test]
fn finding12_numbers_that_are_not_dotted_quads_are_errors_never_names() {
    let vars = Vars::from_pairs([("ODD", "010.000.000.001")]);
    for entry in [
        "010.000.000.001",
        "1.2.3",
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "1.2.3.4.5",
        "127.1.",
        "https://2130706433/hook",
        "http://0x7f.1:8080/",
        "${ODD}",
    ] {
        let (result, asked) = load_recording(&egress_to(entry), &vars);
        let e = result.err().unwrap_or_else(|| panic!("`{entry}` accepted (resolver asked {asked:?})"));
        assert!(asked.is_empty(), "`{entry}` reached the resolver: {asked:?}");
        assert_eq!((e.line, e.col), (6, 14), "{e}");
        let message = e.to_string();
        assert!(message.starts_with("x.yaml:6:14: ") && message.contains("use dotted-quad"), "{message}");
    }
    // CIDRs: a leading zero is an octal number to some parsers.
    let (result, _) = load_recording(&egress_to("010.0.0.0/8"), &vars);
    assert!(result.is_err(), "010.0.0.0/8 accepted");

    // The forms that mean one thing, and real names, still work.
    for entry in [
        "10.0.0.1",
        "0.0.0.0/0",
        "2001:0db8::1",
        "::ffff:198.51.100.1",
        "2001:db8::/32",
        "hooks.example.com",
        "3com.example",
        "https://10.0.0.1:8443/x",
    ] {
        let (result, _) = load_recording(&egress_to(entry), &vars);
        if let Err(e) = result {
            panic!("`{entry}` refused: {e}");
        }
    }
}

#[test]
fn finding12_a_second_yaml_document_is_an_error() {
    let vars = Vars::from_pairs::<&str, &str>([]);
    let two = format!("{POLICY}---\nname: other\nphases:\n  runtime:\n    egress_default: allow\n");
    let (result, _) = load_recording(&two, &vars);
    let e = result.expect_err("a second document was ignored");
    assert_eq!((e.line, e.col), (6, 1), "{e}");
    assert!(e.to_string().contains("second YAML document"), "{e}");
    // After an explicit end of document, too.
    let (result, _) = load_recording(&format!("{POLICY}...\nname: other\n"), &vars);
    assert!(result.is_err(), "a document after `...` was ignored");
    // One document, with its optional markers, is fine.
    let (result, _) = load_recording(&format!("---\n{POLICY}...\n"), &vars);
    if let Err(e) = result {
        panic!("one explicit document refused: {e}");
    }
}

/// A top-level key indented less than the first one ends the first
/// document where it stands: the YAML loader used to keep the first part
/// and drop the rest without a word (here an address set and a phase).
#[test]
fn a_dedented_top_level_key_is_an_error_not_the_end_of_the_policy() {
    let vars = Vars::from_pairs::<&str, &str>([]);
    let text = " name: t\n phases:\n   runtime:\n     egress_default: allow\n\
                addresses:\n  hooks: [198.18.0.1]\n";
    let (result, _) = load_recording(text, &vars);
    let e = result.expect_err("the lines after the dedent were dropped");
    assert_eq!((e.line, e.col), (5, 1), "{e}");
    assert!(matches!(e.kind, ErrorKind::TopLevelEnds), "{e}");
    // Indented alike, the same lines are one policy.
    let aligned = text.replace("\naddresses:\n  hooks", "\n addresses:\n   hooks");
    let (result, _) = load_recording(&aligned, &vars);
    if let Err(e) = result {
        panic!("an indented policy refused: {e}");
    }
}

#[test]
fn finding12_a_utf8_bom_is_skipped() {
    let vars = Vars::from_pairs::<&str, &str>([]);
    let (result, _) = load_recording(&format!("\u{feff}{POLICY}"), &vars);
    let loaded = result.unwrap_or_else(|e| panic!("a BOM broke the policy: {e}"));
    assert_eq!(loaded.policy.name, "t");
    // Positions on the first line are those an editor shows (no BOM column).
    let (result, _) = load_recording("\u{feff}nme: t\n", &vars);
    let e = result.expect_err("unknown key accepted");
    assert_eq!((e.line, e.col), (1, 1), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join(".env");
    std::fs::write(&env, "\u{feff}HOOK=203.0.113.9\n").unwrap();
    let vars = fw_user::source::file::env_vars(Some(&env)).unwrap();
    assert_eq!(vars.get("HOOK").as_deref(), Some("203.0.113.9"));
}

/// `path` relative to the current directory (which tests do not change:
/// they run in parallel).
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut up = PathBuf::new();
    for _ in cwd.components().filter(|c| matches!(c, Component::Normal(_))) {
        up.push("..");
    }
    up.join(path.strip_prefix("/").unwrap())
}

#[test]
fn finding8_relative_policy_path_is_stored_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let canonical = std::fs::canonicalize(&file).unwrap();

    // `fw run --policy ../../tmp/.../sub/../policy.yaml` from some directory.
    let relative = relative_to_cwd(&sub).join("../policy.yaml");
    assert!(relative.is_relative());
    let loaded = source::load_phase(relative.to_str().unwrap(), None, "runtime").unwrap();
    assert_eq!(loaded.source, canonical.display().to_string(), "the recorded source must not depend on the directory");
    assert_eq!(PolicyText::resolve(relative.to_str().unwrap()).unwrap().label, loaded.source);

    // The env file an instance records, likewise.
    let env = dir.path().join("policy.env");
    std::fs::write(&env, "A=1\n").unwrap();
    let relative_env = relative_to_cwd(&sub).join("../policy.env");
    assert_eq!(source::env_file(Some(&relative_env)), Some(std::fs::canonicalize(&env).unwrap()));
}
