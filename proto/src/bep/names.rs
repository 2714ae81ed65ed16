//! File names as they travel in BEP: relative, `/`-separated, clean.
//! Everything a peer sends is checked here before it is used as a path.

/// Names Syncthing keeps for itself at the folder root; never indexed or
/// served.
pub const INTERNAL_NAMES: [&str; 3] = [".stfolder", ".stignore", ".stversions"];
/// Prefix of a Syncthing temporary file on Unix-likes.
pub const TEMP_PREFIX_UNIX: &str = ".syncthing.";
/// Prefix of a Syncthing temporary file on Windows.
pub const TEMP_PREFIX_WINDOWS: &str = "~syncthing~";

/// Why a name from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty file name")]
    Empty,
    #[error("file name {0:?} is not in canonical form (absolute, `.`/`..` or empty components, trailing slash, NUL)")]
    NotCanonical(String),
}

/// Checks that `name` is a canonical relative path: what Go's `path.Clean`
/// would leave unchanged, not absolute, and with no `.` or `..` component
/// (so it can never leave the folder).
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let bad = name.starts_with('/')
        || name.contains('\0')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(NameError::NotCanonical(name.to_string()));
    }
    Ok(())
}

/// Whether `name` is one of Syncthing's internal files or lies below one.
///
/// Compared without regard to ASCII case: on a case-insensitive
/// filesystem (vfat, exFAT, SMB, ext4 casefold, macOS) `.STIGNORE` *is*
/// `.stignore`, so a peer must not be able to write, and we must never
/// serve or announce, any spelling of these names.
pub fn is_internal(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or(name);
    INTERNAL_NAMES.iter().any(|i| first.eq_ignore_ascii_case(i))
}

/// Whether the last component of `name` is a Syncthing temporary file
/// (exact case: the scanner deletes stale ones, and a user's file that
/// merely looks similar must survive).
pub fn is_temporary(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    (base.starts_with(TEMP_PREFIX_UNIX) || base.starts_with(TEMP_PREFIX_WINDOWS))
        && base.ends_with(".tmp")
}

/// [`is_temporary`] in any ASCII case: a name from a peer that would be
/// one of our temporary files on a case-insensitive filesystem.
pub fn is_temporary_any_case(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    let starts = |p: &str| {
        base.get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p))
    };
    let ends = base.len() >= 4
        && base
            .get(base.len() - 4..)
            .is_some_and(|e| e.eq_ignore_ascii_case(".tmp"));
    (starts(TEMP_PREFIX_UNIX) || starts(TEMP_PREFIX_WINDOWS)) && ends
}

/// Whether a name from a peer is one we keep for ourselves (internal or
/// temporary, in any case): never written, served or taken from a peer.
pub fn is_reserved(name: &str) -> bool {
    is_internal(name) || is_temporary_any_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_relative_names_pass() {
        for ok in [
            "a",
            "a/b",
            "dir with space/ü.txt",
            "..a",
            "a..",
            ".hidden/x",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "..",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a\0b",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn internal_and_temporary_names() {
        assert!(is_internal(".stfolder"));
        assert!(is_internal(".stversions/a/b"));
        assert!(!is_internal(".stfolderx"));
        assert!(!is_internal("a/.stignore"));
        assert!(is_temporary("a/.syncthing.foo.txt.tmp"));
        assert!(is_temporary("~syncthing~foo.tmp"));
        assert!(!is_temporary(".syncthing.foo"));
        assert!(!is_temporary("x.tmp"));
    }

    #[test]
    fn reserved_names_match_in_any_ascii_case() {
        for n in [".STIGNORE", ".StFolder", ".STVERSIONS/a", ".stfolder/x/y"] {
            assert!(is_internal(n), "{n}");
            assert!(is_reserved(n), "{n}");
        }
        assert!(!is_internal(".STFOLDERX"));
        assert!(!is_internal("a/.STIGNORE"));
        assert!(is_reserved("a/.SYNCTHING.foo.TMP"));
        assert!(is_reserved("~SYNCTHING~x.Tmp"));
        assert!(
            !is_temporary("a/.SYNCTHING.foo.TMP"),
            "local cleanup stays exact"
        );
        assert!(!is_reserved("a/.syncthing.foo"));
        assert!(!is_reserved("é.tmp"));
    }
}
