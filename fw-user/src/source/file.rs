//! Reading a policy or env file. Only a regular file of at most
//! [`MAX_FILE_BYTES`] is read: a FIFO would block `open()` until a writer
//! comes, and a device like /dev/zero never ends, both while `fw` may hold
//! an instance lock. The file is opened with `O_NONBLOCK` (which keeps
//! `open()` of a FIFO from waiting, and means nothing for a regular file),
//! then judged by `fstat` of that very descriptor, so nothing can be swapped
//! in between; no read ever needs a timeout.

use std::{
    fs::File,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

use crate::policy::{
    error::{ErrorKind, PolicyError},
    ir::Pos,
    parse_str, LoadedPolicy, Vars,
};

/// The largest policy or env file: 64 MiB, far above a 50,000-rule policy
/// (about 4 MiB) and far below what would strain memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The text of the regular file at `path`, or why not; errors are
/// reported under `label` (the path as the operator should see it).
pub fn read_text(path: &Path, label: &str) -> Result<String, PolicyError> {
    read(path).map_err(|(pos, kind)| PolicyError::new(label, pos, kind))
}

fn read(path: &Path) -> Result<String, (Pos, ErrorKind)> {
    let unplaced = |kind| (Pos::default(), kind);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| unplaced(ErrorKind::Io(e.to_string())))?;
    let meta = file.metadata().map_err(|e| unplaced(ErrorKind::Io(e.to_string())))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let found = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(unplaced(ErrorKind::NotRegularFile(found)));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(unplaced(too_large()));
    }
    read_bounded(file)
}

fn too_large() -> ErrorKind {
    ErrorKind::TooLarge { limit_mib: MAX_FILE_BYTES >> 20 }
}

/// At most one byte more than the limit: a file that grew after `fstat`
/// is refused too, not read to its end.
fn read_bounded(file: File) -> Result<String, (Pos, ErrorKind)> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (Pos::default(), ErrorKind::Io(e.to_string())))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err((Pos::default(), too_large()));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let col = String::from_utf8_lossy(&valid[line_start..]).chars().count() + 1;
        (Pos { line, col }, ErrorKind::NotUtf8)
    })
}

/// Reads (a regular file only) and validates the policy at `path`,
/// resolving host names with the system resolver.
pub fn load_policy_file(path: &Path, vars: &Vars) -> Result<LoadedPolicy, PolicyError> {
    let file = path.display().to_string();
    let text = read_text(path, &file)?;
    parse_str(&text, &file, vars)
}

/// The values of the env file at `path` (a regular file only), then the
/// process environment; without a path, the process environment only.
pub fn env_vars(path: Option<&Path>) -> Result<Vars, PolicyError> {
    match path {
        Some(path) => {
            let file = path.display().to_string();
            Vars::from_env_text(&file, &read_text(path, &file)?)
        }
        None => Ok(Vars::from_process_env()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_everything_else_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, "name: t\n").unwrap();
        assert_eq!(read(&path), Ok("name: t\n".to_string()));
        assert_eq!(read(dir.path()).unwrap_err().1, ErrorKind::NotRegularFile("a directory"));
        assert_eq!(read(Path::new("/dev/null")).unwrap_err().1, ErrorKind::NotRegularFile("a character device"));
        assert!(matches!(read(&dir.path().join("missing")), Err((_, ErrorKind::Io(_)))));
        let e = read_text(Path::new("/dev/null"), "null.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "null.yaml: not a regular file but a character device (a policy or env file must be one)"
        );
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, b"name: t\nph\xffases:\n").unwrap();
        let e = read_text(&path, "p.yaml").unwrap_err();
        assert_eq!(e.to_string(), "p.yaml:2:3: not UTF-8 text");
    }
}
