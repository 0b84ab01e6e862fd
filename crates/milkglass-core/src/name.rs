use crate::{Invalid, InvalidResult};

/// Longest accepted name for projects, datasets, inference sets and users.
pub const MAX_NAME_LEN: usize = 128;

/// Names become parts of URLs and directory names, so they are restricted to a
/// portable alphabet: letters, digits, `_`, `-` and `.`, not starting with `.`.
pub fn check_name(field: &str, name: &str) -> InvalidResult<()> {
    if name.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Invalid::new(field, format!("is longer than {MAX_NAME_LEN} bytes")));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Invalid::new(field, format!("contains a control character (U+{:04X})", c as u32)));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(Invalid::new(field, "must not contain a path separator ('/' or '\\')"));
    }
    if name.starts_with('.') {
        return Err(Invalid::new(field, "must not start with '.'"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(Invalid::new(field, format!("contains {c:?}; use letters, digits, '_', '-' or '.'")));
    }
    Ok(())
}

/// Identifiers of frames and labels are opaque user strings; they only need to be
/// non-empty, bounded and free of control characters.
pub(crate) fn check_id(field: &str, id: &str) -> InvalidResult<()> {
    if id.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if id.len() > 512 {
        return Err(Invalid::new(field, "is longer than 512 bytes"));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_portable_names() {
        for ok in ["shapes", "shapes-v2", "a_b.c", "X9"] {
            check_name("name", ok).unwrap();
        }
    }

    #[test]
    fn rejects_traversal_and_control_characters() {
        for bad in ["", "../etc", "a/b", "a\\b", ".hidden", "tab\there", "new\nline", "sp ace", &"x".repeat(129)] {
            let err = check_name("name", bad).unwrap_err();
            assert_eq!(err.field, "name");
        }
    }
}
