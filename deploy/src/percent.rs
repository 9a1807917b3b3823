//! Percent-encoding of URL paths (RFC 3986), for the object names the
//! publishers put in URLs and the paths their servers and the image cache
//! read back.

/// Percent-encodes one path segment: every byte but the unreserved ones
/// (`A-Z a-z 0-9 - . _ ~`).
pub fn encode_segment(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path segment by segment, keeping its `/`.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that
/// is not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_escapes() {
        assert_eq!(encode_path("a b/ü%?#&+.iso"), "a%20b/%C3%BC%25%3F%23%26%2B.iso");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
        for s in ["a b/ü%?#&+.iso", "", "~-._", "%2e%2e"] {
            assert_eq!(decode(&encode_path(s)).as_deref(), Some(s));
        }
        assert_eq!(decode("%2e%2E%2f").as_deref(), Some("../"));
        for bad in ["%", "%2", "%zz", "%ff"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
