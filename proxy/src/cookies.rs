//! Cookie parsing: the `Cookie` request header and the application's
//! `Set-Cookie` response headers.

/// Name of the gateway's pending-login cookie over plain HTTP.
pub const PENDING_COOKIE: &str = "otpgate_pending";
/// Name of the pending-login cookie under TLS; the `__Host-` prefix makes
/// browsers require Secure, Path=/ and no Domain.
pub const PENDING_COOKIE_TLS: &str = "__Host-otpgate_pending";

/// Returns every value of cookie `name` in a `Cookie` header, in order.
pub fn values<'a>(header: &'a str, name: &str) -> Vec<&'a str> {
    values_iter(header, name).collect()
}

/// Like [`values`], without collecting: the values of every cookie named
/// `name` in a `Cookie` header, in order.
pub fn values_iter<'a, 'n>(header: &'a str, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    header.split(';').filter_map(move |pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// Returns the `Cookie` header without the cookies whose names `drop`
/// selects, or `None` if nothing is left.
pub fn without(header: &str, drop: impl Fn(&str) -> bool) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(key, _)| key.trim());
            !drop(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Reports whether a cookie name belongs to the gateway; such cookies are
/// never forwarded to the application.
pub fn is_gateway_cookie(name: &str) -> bool {
    name.starts_with("otpgate_") || name.starts_with("__Host-otpgate_")
}

/// The name and value of a `Set-Cookie` header, and whether it deletes
/// the cookie (`Max-Age=0` or less, or an empty value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub deletes: bool,
}

/// Parses a `Set-Cookie` header value; `None` if it has no `name=value`.
pub fn parse_set_cookie(header: &str) -> Option<SetCookie> {
    let cookie = cookie::Cookie::parse(header.to_string()).ok()?;
    let expired = cookie.max_age().is_some_and(|age| age.whole_seconds() <= 0);
    Some(SetCookie {
        name: cookie.name().to_string(),
        value: cookie.value().to_string(),
        deletes: expired || cookie.value().is_empty(),
    })
}

/// Builds the pending-login cookie. Under TLS it carries the `__Host-`
/// prefix and `Secure`.
pub fn pending_cookie(ticket: &str, tls: bool, max_age: u64) -> String {
    let name = if tls { PENDING_COOKIE_TLS } else { PENDING_COOKIE };
    let secure = if tls { "; Secure" } else { "" };
    format!("{name}={ticket}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// Builds a header that deletes the pending-login cookie.
pub fn clear_pending_cookie(tls: bool) -> String {
    pending_cookie("", tls, 0)
}

/// Builds a header that deletes the application's session cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_finds_every_occurrence() {
        let header = "a=1; sessionid=abc; b=2; sessionid=def";
        assert_eq!(values(header, "sessionid"), vec!["abc", "def"]);
        assert!(values(header, "session").is_empty());
    }

    #[test]
    fn without_drops_gateway_cookies() {
        let header = "sessionid=abc; otpgate_pending=t; csrftoken=x";
        assert_eq!(without(header, is_gateway_cookie).unwrap(), "sessionid=abc; csrftoken=x");
        assert_eq!(without("otpgate_pending=t", is_gateway_cookie), None);
    }

    #[test]
    fn set_cookie_detects_deletion() {
        let set = parse_set_cookie("sessionid=abc; Path=/; HttpOnly").unwrap();
        assert_eq!(set.name, "sessionid");
        assert!(!set.deletes);
        assert!(parse_set_cookie("last_login=1; Path=/; Max-Age=0").unwrap().deletes);
        assert!(parse_set_cookie("sessionid=; Path=/").unwrap().deletes);
        assert!(parse_set_cookie("garbage").is_none());
    }
}
