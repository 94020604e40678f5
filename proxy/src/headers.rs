//! The identity header: removal of client-sent copies, and the value the
//! gateway sets for a verified member.

use std::sync::Arc;

use http::header::CONNECTION;
use http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS};
use pingora::http::RequestHeader;

/// Bytes of a member name that the header value carries percent-encoded:
/// controls, space, `%` itself, and (always) every byte outside ASCII.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// Folds a header name the way some servers and frameworks do (CGI turns
/// `-` into `_`, some proxies accept `.`), so every spelling that could
/// reach the application as the identity header compares equal.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            other => other.to_ascii_lowercase(),
        })
        .collect()
}

/// Compares a header name with a folded name without allocating.
fn folds_to(name: &str, folded: &str) -> bool {
    name.len() == folded.len()
        && name.bytes().zip(folded.bytes()).all(|(a, b)| {
            let a = match a {
                b'_' | b'.' => b'-',
                other => other.to_ascii_lowercase(),
            };
            a == b
        })
}

/// A verified member as the request context carries it: the name for logs
/// and the ready-made header value for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The member name as stored in the session flag.
    pub member: Arc<str>,
    /// The member name percent-encoded as UTF-8 wherever a byte is a
    /// control, a space, `%` or outside ASCII; other names pass unchanged.
    pub value: HeaderValue,
}

impl Identity {
    /// Builds the identity of `member`. Every name has a valid header
    /// value, so this cannot fail.
    pub fn new(member: Arc<str>) -> Identity {
        let encoded = percent_encoding::utf8_percent_encode(&member, ENCODED).to_string();
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(encoded)).expect("a percent-encoded name is a valid header value");
        Identity { member, value }
    }
}

/// The configured identity header (`app.identity_header`), parsed and
/// folded once at start-up.
#[derive(Debug, Clone)]
pub struct IdentityHeader {
    /// The name as configured, in its letter case, shared by every request.
    spelling: bytes::Bytes,
    folded: String,
}

impl IdentityHeader {
    /// Parses `name`. The configuration validates it as a header name, so
    /// an error here means the settings were not validated.
    pub fn new(name: &str) -> Result<IdentityHeader, http::header::InvalidHeaderName> {
        HeaderName::from_bytes(name.as_bytes())?;
        Ok(IdentityHeader { spelling: bytes::Bytes::from(name.to_string()), folded: fold(name) })
    }

    /// Sets the header to `identity`, replacing any value.
    pub fn set(&self, request: &mut RequestHeader, identity: &Identity) -> pingora::Result<()> {
        request.insert_header(self.spelling.clone(), identity.value.clone())
    }

    /// Removes every header that folds to the identity header, and removes
    /// it from `Connection`, so a client cannot make a hop drop the
    /// gateway's own value or smuggle one in.
    pub fn strip(&self, request: &mut RequestHeader) {
        // Fast path: most requests carry neither a copy nor a Connection header.
        let has_copy = request.headers.keys().any(|name| folds_to(name.as_str(), &self.folded));
        if !has_copy && !request.headers.contains_key(CONNECTION) {
            return;
        }
        let names: Vec<HeaderName> = request.headers.keys().filter(|name| folds_to(name.as_str(), &self.folded)).cloned().collect();
        for name in names {
            request.remove_header(&name);
        }

        let connection: Vec<String> = request
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty() && fold(token) != self.folded)
            .collect();
        if request.headers.contains_key(CONNECTION) {
            request.remove_header(&CONNECTION);
            if !connection.is_empty() {
                let _ = request.insert_header(CONNECTION, connection.join(", "));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn strip_removes_every_spelling_and_the_connection_token() {
        let header = IdentityHeader::new("X-Otpgate-User").unwrap();
        let mut req = request(&[
            ("x-otpgate-user", "a"),
            ("X_Otpgate_User", "b"),
            ("x.otpgate.user", "c"),
            ("connection", "keep-alive, X_Otpgate_User"),
            ("accept", "*/*"),
        ]);
        header.strip(&mut req);
        let names: Vec<&str> = req.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "connection"]);
        assert_eq!(req.headers.get("connection").unwrap(), "keep-alive");
    }

    #[test]
    fn strip_leaves_other_requests_alone() {
        let header = IdentityHeader::new("X-Otpgate-User").unwrap();
        let mut req = request(&[("accept", "*/*"), ("x-otpgate-username", "a")]);
        header.strip(&mut req);
        assert_eq!(req.headers.len(), 2);
    }

    #[test]
    fn set_replaces_value_keeps_spelling() {
        let header = IdentityHeader::new("X-Otpgate-User").unwrap();
        let mut req = request(&[("x-otpgate-user", "admin")]);
        header.set(&mut req, &Identity::new(Arc::from("alice"))).unwrap();
        let values: Vec<_> = req.headers.get_all("x-otpgate-user").iter().collect();
        assert_eq!(values, ["alice"]);
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert_eq!(String::from_utf8(wire).unwrap(), "X-Otpgate-User: alice\r\n");
    }

    #[test]
    fn identity_value_encodes_what_a_header_cannot_carry() {
        assert_eq!(Identity::new(Arc::from("alice")).value, "alice");
        assert_eq!(Identity::new(Arc::from("josé")).value, "jos%C3%A9");
        assert_eq!(Identity::new(Arc::from("100%")).value, "100%25");
        assert_eq!(Identity::new(Arc::from("a b\r\nX: y")).value, "a%20b%0D%0AX:%20y");
    }
}
