//! Keys of files in a hosted store, as URL paths: one rule for what a key may be, used by the
//! service when it signs a key and by `milkglass-files` when it serves a request path.

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// One name as one URL path segment (`/` and every other reserved byte encoded).
pub fn encode_segment(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Why one decoded path segment names no file: `None` when it is a plain name.
pub fn segment_refusal(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        return Some("empty path segments are not served");
    }
    if segment == "." || segment == ".." {
        return Some("`.` and `..` segments are not served");
    }
    if segment.contains(['/', '\\', '\0']) {
        return Some("encoded separators and NUL are not served");
    }
    let bytes = segment.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return Some("drive letters are not served");
    }
    None
}

/// Why a store key (`cats/a.png`, already decoded) cannot name a file, if it cannot.
pub fn key_refusal(key: &str) -> Option<&'static str> {
    if key.starts_with('/') {
        return Some("absolute paths are not served");
    }
    key.split('/').find_map(segment_refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(key_refusal("cats/a.png"), None);
        for bad in ["../x", "a//b", "/abs", "a/./b", "", "c:x", "a\\b", "a\0b"] {
            assert!(key_refusal(bad).is_some(), "{bad:?}");
        }
    }
}
