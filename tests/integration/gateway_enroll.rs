//! Enrollment, backup codes, regeneration, disabling and the `required`
//! policy through the running gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::qr::{decode_png, uri_param};
use crate::harness::stack::{backup_codes_in, csrf_in, Browser, Stack};
use crate::harness::totp::oathtool_base32;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn location(response: &reqwest::Response) -> String {
    response.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Scans the enrollment QR code and returns the secret it carries.
async fn scan_secret(browser: &Browser) -> (String, String) {
    let png = browser.get("/_otpgate/enroll/qr.png").await.bytes().await.unwrap();
    let uri = decode_png(&png);
    let secret = uri_param(&uri, "secret").expect("the URI carries a secret");
    (uri, secret)
}

/// Logs `user` in without 2FA, enrolls through the settings page, and
/// returns the secret and the ten backup codes.
async fn enroll(stack: &Stack, user: &str, password: &str) -> (Browser, String, Vec<String>) {
    let browser = stack.browser();
    assert_eq!(browser.login(user, password).await.status(), 302);
    let settings = browser.get("/_otpgate/settings").await.text().await.unwrap();
    assert!(settings.contains("Two-Factor Authentication"), "{settings}");
    assert!(settings.contains("Configure 2FA"), "{settings}");

    let page = browser.post_form("/_otpgate/settings", "/_otpgate/enroll/start", &[("password", password)]).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Verify &amp; Activate"), "{page}");
    assert!(page.contains("<svg"), "the page shows the QR code inline");
    let csrf = csrf_in(&page);

    let (uri, secret) = scan_secret(&browser).await;
    assert!(uri.starts_with("otpauth://totp/Meelance:"), "{uri}");
    assert_eq!(uri_param(&uri, "issuer").as_deref(), Some("Meelance"));
    assert_eq!(uri_param(&uri, "algorithm").as_deref(), Some("SHA1"));
    assert_eq!(uri_param(&uri, "digits").as_deref(), Some("6"));
    assert_eq!(uri_param(&uri, "period").as_deref(), Some("30"));
    let grouped: String = secret.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" ");
    assert!(page.contains(&grouped), "the page shows the secret grouped in fours");

    let code = oathtool_base32(&secret, now());
    let done = browser.submit_enrollment(&code, &csrf).await;
    assert_eq!(done.status(), 200);
    let text = done.text().await.unwrap();
    assert!(text.contains("Finish"), "{text}");
    let codes = backup_codes_in(&text);
    assert_eq!(codes.len(), 10, "{text}");
    (browser, secret, codes)
}

/// Returns the code of the step after the current one: inside the window
/// and above the step the enrollment used.
fn next_code(secret: &str) -> String {
    oathtool_base32(secret, now() + 30)
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_then_login_needs_code() {
    let stack = Stack::start("");
    let (browser, secret, _codes) = enroll(&stack, "bob", "builder-42").await;
    browser.get("/logout").await;

    let fresh = stack.browser();
    let response = fresh.login("bob", "builder-42").await;
    assert_eq!(response.status(), 303);
    assert!(!fresh.has_cookie("sessionid"));
    // The code that confirmed enrollment was used in this step already.
    let enrollment_code = oathtool_base32(&secret, now());
    assert_eq!(fresh.submit_code(&enrollment_code).await.status(), 401);
    assert_eq!(fresh.submit_code(&next_code(&secret)).await.status(), 303);
    assert_eq!(fresh.get("/dashboard").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_enrollment_code_saves_nothing() {
    let stack = Stack::start("");
    let browser = stack.browser();
    browser.login("carol", "singer-42").await;
    let page = browser.post_form("/_otpgate/settings", "/_otpgate/enroll/start", &[("password", "singer-42")]).await;
    let csrf = csrf_in(&page.text().await.unwrap());
    let wrong = browser.submit_enrollment("000000", &csrf).await;
    assert_eq!(wrong.status(), 401);
    let status = stack.otpgate(&["user", "status", "carol"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no two-factor"), "the seed was saved before a correct code");
    // A new login still needs no code.
    let other = stack.browser();
    assert_eq!(other.login("carol", "singer-42").await.status(), 302);
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_rejects_wrong_password() {
    let stack = Stack::start("");
    let browser = stack.browser();
    browser.login("dave", "diver-42").await;
    let page = browser.post_form("/_otpgate/settings", "/_otpgate/enroll/start", &[("password", "not-it")]).await;
    assert_eq!(page.status(), 400);
    assert!(page.text().await.unwrap().contains("password was not accepted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_code_works_once() {
    let stack = Stack::start("");
    let (_browser, _secret, codes) = enroll(&stack, "erin", "explorer-42").await;

    let first = stack.browser();
    first.login("erin", "explorer-42").await;
    let typed = codes[0].to_lowercase().replace('-', " ");
    assert_eq!(first.submit_backup(&typed).await.status(), 303);
    assert_eq!(first.get("/dashboard").await.status(), 200);

    let second = stack.browser();
    second.login("erin", "explorer-42").await;
    assert_eq!(second.submit_backup(&codes[0]).await.status(), 401);
    assert_eq!(second.submit_backup(&codes[1]).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_backup_code_single_success() {
    let stack = Stack::start("[rate_limit]\nsecond_factor_per_user = { limit = 100, window_secs = 60 }\nsecond_factor_per_address = { limit = 100, window_secs = 60 }\npassword_per_address = { limit = 100, window_secs = 60 }\npassword_per_user = { limit = 100, window_secs = 60 }");
    let (_browser, _secret, codes) = enroll(&stack, "alice", "wonderland-42").await;
    let mut browsers = Vec::new();
    for _ in 0..20 {
        let browser = stack.browser();
        assert_eq!(browser.login("alice", "wonderland-42").await.status(), 303);
        browsers.push(browser);
    }
    let code = codes[5].clone();
    let results = futures::future::join_all(browsers.iter().map(|b| b.submit_backup(&code))).await;
    let successes = results.iter().filter(|r| r.status() == 303).count();
    assert_eq!(successes, 1, "statuses: {:?}", results.iter().map(|r| r.status()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn regenerate_replaces_backup_codes() {
    let stack = Stack::start("");
    let (browser, secret, old) = enroll(&stack, "bob", "builder-42").await;
    let page = browser.post_form("/_otpgate/settings", "/_otpgate/backup/regenerate", &[("password", "builder-42")]).await;
    assert_eq!(page.status(), 200);
    let new = backup_codes_in(&page.text().await.unwrap());
    assert_eq!(new.len(), 10);
    let _ = secret;

    let login = stack.browser();
    login.login("bob", "builder-42").await;
    assert_eq!(login.submit_backup(&old[0]).await.status(), 401, "an old backup code still works");
    assert_eq!(login.submit_backup(&new[0]).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn disable_then_login_needs_no_code() {
    let stack = Stack::start("");
    let (browser, _secret, codes) = enroll(&stack, "carol", "singer-42").await;
    let wrong = browser.post_form("/_otpgate/settings", "/_otpgate/disable", &[("password", "singer-42"), ("code", "AAAAA-AAAAA")]).await;
    assert_eq!(wrong.status(), 400, "disable without a valid second factor succeeded");
    let done = browser.post_form("/_otpgate/settings", "/_otpgate/disable", &[("password", "singer-42"), ("code", &codes[2])]).await;
    assert_eq!(done.status(), 200);
    let fresh = stack.browser();
    assert_eq!(fresh.login("carol", "singer-42").await.status(), 302);
    assert_eq!(fresh.get("/dashboard").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn required_policy_enrolls_before_anything() {
    let stack = Stack::start_with("policy = \"required\"", "");
    let browser = stack.browser();
    let response = browser.login("dave", "diver-42").await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/_otpgate/enroll");
    assert!(!browser.has_cookie("sessionid"));
    let dashboard = browser.get("/dashboard").await;
    assert_eq!(dashboard.status(), 303);
    assert!(!browser.has_cookie("sessionid"), "a member without 2FA reached the app under policy required");

    let page = browser.get("/_otpgate/enroll").await.text().await.unwrap();
    let csrf = csrf_in(&page);
    let (_uri, secret) = scan_secret(&browser).await;
    let done = browser.submit_enrollment(&oathtool_base32(&secret, now()), &csrf).await;
    assert_eq!(done.status(), 200);
    assert!(browser.has_cookie("sessionid"), "the held session was not released after enrollment");
    assert_eq!(browser.get("/dashboard").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_link_injected_only_when_configured() {
    let plain = Stack::start("");
    let browser = plain.browser();
    browser.login("bob", "builder-42").await;
    let page = browser.get("/dashboard").await.text().await.unwrap();
    assert!(!page.contains("/_otpgate/settings"), "the link appeared although injection is off");

    let injecting = Stack::start_with("inject_settings_link = true", "");
    let browser = injecting.browser();
    browser.login("bob", "builder-42").await;
    let page = browser.get("/dashboard").await.text().await.unwrap();
    assert!(page.contains("<a href=\"/_otpgate/settings\">Two-Factor Authentication settings</a>"), "{page}");
    assert!(page.contains("Welcome, bob"), "{page}");
}
