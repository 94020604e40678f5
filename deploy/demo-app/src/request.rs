//! Helpers that read cookies, headers and redirect targets from requests.

use axum::http::header::COOKIE;
use axum::http::{HeaderMap, Uri};
use sha2::{Digest, Sha256};

/// Returns the path and query exactly as the client sent them, without decoding.
pub fn raw_path(uri: &Uri) -> &str {
    uri.path_and_query()
        .map_or_else(|| uri.path(), |path_and_query| path_and_query.as_str())
}

/// Returns the first non-empty value of cookie `name` across all `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| header.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, value)| *key == name && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// Returns the first value of header `name`. Bytes that are not UTF-8 become U+FFFD.
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Returns whether `target` is a local path that is safe as a `next` redirect. It must
/// start with one `/` but not with `//` or `/\`, which browsers treat as another host.
/// It must contain only visible ASCII, so it is also a valid `Location` header value.
pub fn is_local_path(target: &str) -> bool {
    let bytes = target.as_bytes();
    bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(u8::is_ascii_graphic)
}

/// Percent-encodes `value` for a query string, keeping RFC 3986 unreserved characters
/// and `/`.
pub fn percent_encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub fn sha256_hex(data: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn raw_path_keeps_query_and_encoding() {
        let uri: Uri = "/echo/a%2Fb?x=1&y=%20".parse().unwrap();
        assert_eq!(raw_path(&uri), "/echo/a%2Fb?x=1&y=%20");

        let absolute: Uri = "http://example.test/login?next=/profile".parse().unwrap();
        assert_eq!(raw_path(&absolute), "/login?next=/profile");
    }

    #[test]
    fn cookie_value_searches_all_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("theme=dark; csrftoken="));
        headers.append(
            COOKIE,
            HeaderValue::from_static("sessionid=abc;csrftoken=tok"),
        );
        assert_eq!(cookie_value(&headers, "sessionid").as_deref(), Some("abc"));
        assert_eq!(cookie_value(&headers, "csrftoken").as_deref(), Some("tok"));
        assert_eq!(cookie_value(&headers, "theme").as_deref(), Some("dark"));
        assert_eq!(cookie_value(&headers, "session"), None);
    }

    #[test]
    fn local_path_check() {
        assert!(is_local_path("/"));
        assert!(is_local_path("/profile?tab=keys#top"));
        assert!(!is_local_path(""));
        assert!(!is_local_path("profile"));
        assert!(!is_local_path("//evil.example/"));
        assert!(!is_local_path("/\\evil.example/"));
        assert!(!is_local_path("https://evil.example/"));
        assert!(!is_local_path("/a b"));
        assert!(!is_local_path("/caf\u{e9}"));
    }

    #[test]
    fn percent_encoding_of_query_value() {
        assert_eq!(percent_encode_query_value("/profile"), "/profile");
        assert_eq!(percent_encode_query_value("/a?b=c&d"), "/a%3Fb%3Dc%26d");
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
