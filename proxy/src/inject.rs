//! The optional link to the 2FA settings page, inserted into the
//! application's HTML pages (`app.inject_settings_link`, off by default).

use pingora::http::ResponseHeader;

/// Largest page that gets the link; bigger pages pass through unchanged,
/// because the whole body is held in memory to insert it.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Reports whether a response is an uncompressed HTML page of known,
/// modest, non-zero size, the only kind the link is inserted into (an
/// empty body never reaches the body filter that inserts it).
pub fn applies(response: &ResponseHeader) -> bool {
    let header = |name: &str| response.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    response.status.as_u16() == 200
        && header("content-type").starts_with("text/html")
        && header("content-encoding").is_empty()
        && header("content-length").parse::<usize>().is_ok_and(|len| len > 0 && len <= MAX_PAGE_BYTES)
}

/// Inserts a link to `href` before the last `</body>` (any letter case),
/// or appends it when the page has none.
pub fn insert_link(mut page: Vec<u8>, href: &str) -> Vec<u8> {
    let link = format!(
        "<p style=\"margin:1rem 0;font:14px system-ui,sans-serif\"><a href=\"{href}\">Two-Factor Authentication settings</a></p>"
    );
    let lower = page.to_ascii_lowercase();
    let position = lower.windows(7).rposition(|w| w == b"</body>").unwrap_or(page.len());
    page.splice(position..position, link.into_bytes());
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_goes_before_closing_body() {
        let page = insert_link(b"<html><body><p>Hi</p></BODY></html>".to_vec(), "/_otpgate/settings");
        let text = String::from_utf8(page).unwrap();
        assert!(text.contains("Hi</p><p style"), "{text}");
        assert!(text.ends_with("</a></p></BODY></html>"), "{text}");
    }

    #[test]
    fn page_without_body_tag_gets_link_appended() {
        let text = String::from_utf8(insert_link(b"plain".to_vec(), "/s")).unwrap();
        assert!(text.starts_with("plain<p"), "{text}");
    }
}
