//! Removal of client-sent copies of the identity header.

use pingora::http::RequestHeader;

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
        && name.chars().zip(folded.chars()).all(|(a, b)| {
            let a = match a {
                '_' | '.' => '-',
                other => other.to_ascii_lowercase(),
            };
            a == b
        })
}

/// Removes every header that folds to `identity`, and removes `identity`
/// from `Connection`, so a client cannot make a hop drop the gateway's
/// own value or smuggle one in.
pub fn strip_identity(request: &mut RequestHeader, identity: &str) {
    let target = fold(identity);
    // Fast path: most requests carry neither a copy nor a Connection header.
    let has_copy = request.headers.keys().any(|name| folds_to(name.as_str(), &target));
    if !has_copy && !request.headers.contains_key("connection") {
        return;
    }
    let names: Vec<String> = request
        .headers
        .keys()
        .map(|name| name.as_str().to_string())
        .filter(|name| fold(name) == target)
        .collect();
    for name in names {
        request.remove_header(&name);
    }

    let connection: Vec<String> = request
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty() && fold(token) != target)
        .collect();
    if request.headers.contains_key("connection") {
        request.remove_header("connection");
        if !connection.is_empty() {
            let _ = request.insert_header("connection", connection.join(", "));
        }
    }
}
