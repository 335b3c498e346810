//! Workspace paths: [`sanitize_path`] accepts only safe, relative file paths.
//!
//! `export` writes code artifacts to disk under a target folder, joining the
//! folder and the artifact's path. A path the model chose must therefore never
//! leave that folder, name a device, or mean different things on different
//! systems. The check is deliberately strict: anything unusual is refused with
//! a reason the model can act on.

use crate::{Error, Result};

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 255;

/// Characters refused anywhere in a path: Windows-reserved ones and `\`.
const FORBIDDEN: &[char] = &['\\', ':', '*', '?', '"', '<', '>', '|'];

/// Device names Windows reserves in any folder (with or without extension).
const RESERVED: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// Check a workspace path and return it in normal form.
///
/// Accepted: a relative path of `/`-separated components, at most
/// [`MAX_PATH_LEN`] bytes, e.g. `backend/app.py`. Normalisation only drops `.`
/// components and repeated `/` (`./src//main.rs` -> `src/main.rs`).
///
/// Refused: empty paths; absolute paths (`/x`, `C:x`); `..` components;
/// backslashes; NUL and other control characters; the characters
/// `: * ? " < > |`; a leading `~`; a trailing `/` (a folder, not a file);
/// components ending in `.` or space; Windows device names (`con`, `nul.txt`);
/// and `.git` components (export must not write into a repository's metadata).
pub fn sanitize_path(path: &str) -> Result<String> {
    let bad = |reason: &str| {
        Err(Error::InvalidPath {
            path: path.chars().take(300).collect(),
            reason: reason.to_string(),
        })
    };
    if path.trim().is_empty() {
        return bad("the path is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return bad("the path is longer than 255 bytes");
    }
    if path.contains('\0') {
        return bad("the path contains a NUL character");
    }
    if path.chars().any(char::is_control) {
        return bad("the path contains a control character");
    }
    if path.contains('\\') {
        return bad("backslashes are not allowed; separate folders with '/'");
    }
    if path.starts_with('/') {
        return bad("absolute paths are not allowed; use a path relative to the workspace root");
    }
    if let Some(c) = path.chars().find(|c| FORBIDDEN.contains(c)) {
        return bad(&format!("the character {c:?} is not allowed in paths"));
    }
    if path.starts_with('~') {
        return bad("paths may not start with '~'");
    }
    if path.ends_with('/') {
        return bad("the path names a folder; give a file path");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => return bad("'..' components are not allowed"),
            _ => {}
        }
        if part.ends_with('.') || part.ends_with(' ') || part.starts_with(' ') {
            return bad("path components may not start with a space or end with '.' or a space");
        }
        let lower = part.to_ascii_lowercase();
        if lower == ".git" {
            return bad("'.git' components are not allowed");
        }
        let stem = lower.split('.').next().unwrap_or_default();
        if RESERVED.contains(&stem) {
            return bad(&format!("{part:?} is a reserved device name"));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return bad("the path names no file");
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        sanitize_path(p).unwrap_or_else(|e| panic!("{p:?} refused: {e}"))
    }

    fn refused(p: &str, why: &str) {
        let err = sanitize_path(p).expect_err(p).to_string();
        assert!(err.contains(why), "{p:?}: {err}");
    }

    #[test]
    fn accepts_and_normalizes_relative_paths() {
        assert_eq!(ok("backend/app.py"), "backend/app.py");
        assert_eq!(ok("./src//main.rs"), "src/main.rs");
        assert_eq!(ok("db/schema.sql"), "db/schema.sql");
        assert_eq!(ok(".github/workflows/ci.yml"), ".github/workflows/ci.yml");
        assert_eq!(ok("a/.env.example"), "a/.env.example");
        assert_eq!(ok("my file-1_x.tar.gz"), "my file-1_x.tar.gz");
        assert_eq!(ok("données/é.txt"), "données/é.txt");
        assert_eq!(ok(&"a".repeat(255)), "a".repeat(255));
    }

    #[test]
    fn refuses_escapes_and_absolute_paths() {
        refused("../etc/passwd", "'..'");
        refused("a/../../b", "'..'");
        refused("a/..", "'..'");
        refused("/etc/passwd", "absolute");
        refused("C:/Windows/x", "':'");
        refused("C:x", "':'");
        refused("a\\b", "backslash");
        refused("..\\x", "backslash");
        refused("~/.ssh/id_rsa", "'~'");
    }

    #[test]
    fn refuses_odd_characters_and_names() {
        refused("", "empty");
        refused("   ", "empty");
        refused("a\0b", "NUL");
        refused("a\nb", "control");
        refused("a/b/", "folder");
        refused(".", "names no file");
        refused("./", "folder");
        refused("a/b?.txt", "'?'");
        refused("x|y", "'|'");
        refused("a/con", "reserved");
        refused("NUL.txt", "reserved");
        refused("a./b", "end with");
        refused("a /b", "end with");
        refused(".git/hooks/pre-commit", ".git");
        refused("sub/.GIT/config", ".git");
        refused(&"a".repeat(256), "longer than 255");
    }
}
