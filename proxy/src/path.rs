//! Canonical request paths. Every routing rule of the gateway and the
//! path forwarded to the application use the output of [`canonicalize`],
//! so a rule is always applied to exactly the path the application receives.

use std::borrow::Cow;

/// A request path the gateway rejects (with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path contains an encoded slash, backslash or dot")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a control character or an invalid percent escape")]
    InvalidByte,
    #[error("the path contains a ';' parameter")]
    Parameter,
    #[error("the path climbs above the root with ..")]
    AboveRoot,
}

/// Returns the canonical form of a raw request path (without the query):
/// percent escapes of unreserved characters decoded, `.` segments and
/// empty segments removed, `..` resolved. A trailing slash is kept.
///
/// Rejected outright, because applications and proxies disagree on what
/// they mean: encoded `/`, `\` or `.` (`%2F`, `%5C`, `%2E`), raw
/// backslashes, `;` path parameters, control characters, malformed
/// escapes and `..` above the root.
pub fn canonicalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    full_pass(raw).map(Cow::Owned)
}

/// Decodes, checks and resolves an absolute path that [`is_plain`] did not
/// accept as it is.
fn full_pass(raw: &str) -> Result<String, PathError> {
    let decoded = decode_unreserved(raw)?;
    if decoded.contains('\\') {
        return Err(PathError::Backslash);
    }
    if decoded.contains(';') {
        return Err(PathError::Parameter);
    }
    let trailing_slash = decoded.len() > 1 && decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            other => segments.push(other),
        }
    }
    let mut canonical = String::with_capacity(decoded.len());
    for segment in &segments {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() || (trailing_slash && !segments.is_empty()) {
        canonical.push('/');
    }
    Ok(canonical)
}

/// Reports whether a path is canonical as it is: printable ASCII without
/// escapes, backslashes, parameters, empty segments or dot segments. Most
/// request paths are, and skip the full pass.
fn is_plain(raw: &str) -> bool {
    let clean_bytes = raw.bytes().all(|b| (0x21..0x7f).contains(&b) && !matches!(b, b'%' | b'\\' | b';'));
    if !clean_bytes {
        return false;
    }
    // One pass over the segments: no dot segments, and no empty segment
    // except the last one (a trailing slash).
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment == "." || segment == ".." || (segment.is_empty() && segments.peek().is_some()) {
            return false;
        }
    }
    true
}

/// Decodes `%XX` escapes of unreserved characters (RFC 3986 section 2.3)
/// and keeps other escapes as they are, in upper case.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte < 0x20 || byte == 0x7f {
            return Err(PathError::InvalidByte);
        }
        if byte != b'%' {
            // Non-ASCII bytes arrive percent-encoded from conforming
            // clients; a raw one is kept as it is.
            let ch = raw[index..].chars().next().ok_or(PathError::InvalidByte)?;
            out.push(ch);
            index += ch.len_utf8();
            continue;
        }
        let hex = raw.get(index + 1..index + 3).ok_or(PathError::InvalidByte)?;
        let value = u8::from_str_radix(hex, 16).map_err(|_| PathError::InvalidByte)?;
        match value {
            b'/' | b'\\' | b'.' => return Err(PathError::EncodedSeparator),
            0x00..=0x1f | 0x7f => return Err(PathError::InvalidByte),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => out.push(value as char),
            _ => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
        }
        index += 3;
    }
    Ok(out)
}

/// Reports whether a canonical path names the same resource as `route`
/// for an application that routes without regard to letter case or a
/// trailing slash, as many frameworks do.
pub fn same_route(canonical: &str, route: &str) -> bool {
    // Trailing slashes are ignored; an empty result stands for the root.
    canonical.trim_end_matches('/').eq_ignore_ascii_case(route.trim_end_matches('/'))
}

/// Reports whether a canonical path is inside a configured public path:
/// an entry ending in `/` matches everything below it, others match
/// exactly. The entry `/` alone matches only the root page.
pub fn is_public(canonical: &str, public_paths: &[String]) -> bool {
    public_paths.iter().any(|public| {
        if public == "/" {
            canonical == "/"
        } else if public.ends_with('/') {
            canonical.starts_with(public.as_str()) || canonical == public.trim_end_matches('/')
        } else {
            canonical == public
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_variants_canonicalize_to_login() {
        for raw in ["/login", "//login", "/./login", "/%6Cogin", "/%6cogin", "/static/../login"] {
            assert_eq!(canonicalize(raw).unwrap(), "/login", "{raw}");
        }
        assert_eq!(canonicalize("/login/").unwrap(), "/login/");
        assert!(same_route("/LOGIN", "/login"));
        assert!(same_route("/login/", "/login"));
        assert!(!same_route("/login2", "/login"));
    }

    #[test]
    fn encoded_separators_are_rejected() {
        for raw in ["/static/..%2f..%2flogin", "/static/%2e%2e/dashboard", "/a%2Fb", "/a%5cb", "/%2e/login"] {
            assert_eq!(canonicalize(raw), Err(PathError::EncodedSeparator), "{raw}");
        }
    }

    #[test]
    fn backslashes_parameters_and_controls_are_rejected() {
        assert_eq!(canonicalize("/static\\..\\login"), Err(PathError::Backslash));
        assert_eq!(canonicalize("/login;jsessionid=x"), Err(PathError::Parameter));
        assert_eq!(canonicalize("/login%00"), Err(PathError::InvalidByte));
        assert_eq!(canonicalize("/login%zz"), Err(PathError::InvalidByte));
        assert_eq!(canonicalize("/login%4"), Err(PathError::InvalidByte));
        assert_eq!(canonicalize("/../login"), Err(PathError::AboveRoot));
        assert_eq!(canonicalize("login"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn other_escapes_are_kept_upper_case() {
        assert_eq!(canonicalize("/files/a%20b%c3%a9").unwrap(), "/files/a%20b%C3%A9");
        assert_eq!(canonicalize("/").unwrap(), "/");
        assert_eq!(canonicalize("//").unwrap(), "/");
    }

    #[test]
    fn plain_paths_are_what_the_full_pass_returns() {
        let samples = [
            "/", "//", "/a", "/a/", "/a//b", "/a/./b", "/a/../b", "/.", "/..", "/a/.", "/a/..", "/.a", "/a.", "/..a/b", "/a/b.c/",
            "/dashboard", "/static/app.js", "/a%20b", "/a;b", "/a\\b", "/LOGIN/", "///", "/a/b//",
        ];
        for raw in samples {
            if is_plain(raw) {
                assert_eq!(full_pass(raw).as_deref(), Ok(raw), "{raw}");
            }
        }
        for plain in ["/dashboard", "/", "/a/", "/.a"] {
            assert!(is_plain(plain), "{plain}");
        }
        for not_plain in ["//", "/a/./b", "/a/..", "/a%20b"] {
            assert!(!is_plain(not_plain), "{not_plain}");
        }
    }

    #[test]
    fn public_prefixes_match_below_only() {
        let public = vec!["/static/".to_string(), "/about".to_string()];
        assert!(is_public("/static/style.css", &public));
        assert!(is_public("/about", &public));
        assert!(!is_public("/about/x", &public));
        assert!(!is_public("/staticx", &public));
        let root = vec!["/".to_string()];
        assert!(is_public("/", &root));
        assert!(!is_public("/dashboard", &root));
    }
}
