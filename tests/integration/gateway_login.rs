//! Login through the running gateway: interception, the challenge, replay
//! protection, session enforcement, lockout and failure handling.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::stack::Stack;
use crate::harness::totp::oathtool_base32;

const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn location(response: &reqwest::Response) -> String {
    response.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Returns the code of the step before the current one: inside the window,
/// not the current step and not used yet.
fn previous_code() -> String {
    oathtool_base32(SECRET, now() - 30)
}

#[tokio::test(flavor = "multi_thread")]
async fn member_without_2fa_reaches_dashboard() {
    let stack = Stack::start("");
    let browser = stack.browser();
    let response = browser.login("bob", "builder-42").await;
    assert_eq!(response.status(), 302);
    assert_eq!(location(&response), "/dashboard");
    assert!(browser.has_cookie("sessionid"));
    let page = browser.get("/dashboard").await;
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(text.contains("Welcome, bob"), "{text}");
    assert!(text.contains("Gateway identity: bob"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_withheld_until_code() {
    let stack = Stack::start("");
    stack.import("alice", SECRET);
    let browser = stack.browser();

    let response = browser.login("alice", "wonderland-42").await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/_otpgate/challenge");
    assert!(!browser.has_cookie("sessionid"), "the app session leaked before the code");
    assert!(!browser.has_cookie("last_login"));

    // The pending cookie alone opens nothing.
    let dashboard = browser.get("/dashboard").await;
    assert_eq!(dashboard.status(), 303);
    assert_eq!(location(&dashboard), "/_otpgate/challenge");
    assert!(!browser.has_cookie("sessionid"));

    let wrong = browser.submit_code("000000").await;
    assert_eq!(wrong.status(), 401);
    let text = wrong.text().await.unwrap();
    assert!(text.contains("date and time automatically"), "{text}");
    assert!(!browser.has_cookie("sessionid"));

    let right = browser.submit_code(&oathtool_base32(SECRET, now())).await;
    assert_eq!(right.status(), 303);
    assert_eq!(location(&right), "/dashboard");
    assert!(browser.has_cookie("sessionid"));
    let text = browser.get("/dashboard").await.text().await.unwrap();
    assert!(text.contains("Gateway identity: alice"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn held_cookies_released_separately_in_order() {
    let stack = Stack::start("");
    stack.import("alice", SECRET);
    let browser = stack.browser();
    browser.login("alice", "wonderland-42").await;
    let right = browser.submit_code(&oathtool_base32(SECRET, now())).await;
    let set_cookies: Vec<String> = right
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(set_cookies[0].starts_with("sessionid="), "{set_cookies:?}");
    assert!(set_cookies[1].starts_with("last_login="), "{set_cookies:?}");
    assert!(set_cookies[1].contains("Max-Age=0"), "{set_cookies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn code_replay_and_older_code_rejected() {
    let stack = Stack::start("");
    stack.import("carol", SECRET);
    let code = oathtool_base32(SECRET, now());

    let first = stack.browser();
    first.login("carol", "singer-42").await;
    assert_eq!(first.submit_code(&code).await.status(), 303);

    let second = stack.browser();
    second.login("carol", "singer-42").await;
    assert_eq!(second.submit_code(&code).await.status(), 401, "a used code was accepted again");
    assert_eq!(second.submit_code(&previous_code()).await.status(), 401, "an older code was accepted after a newer one");
    assert!(!second.has_cookie("sessionid"));
}

#[tokio::test(flavor = "multi_thread")]
async fn code_with_spaces_accepted() {
    let stack = Stack::start("");
    stack.import("dave", SECRET);
    let browser = stack.browser();
    browser.login("dave", "diver-42").await;
    let code = oathtool_base32(SECRET, now());
    let spaced = format!(" {} {} ", &code[..3], &code[3..]);
    assert_eq!(browser.submit_code(&spaced).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn unverified_session_cookie_never_reaches_app() {
    let stack = Stack::start("");
    let browser = stack.browser();
    let forged = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let html = forged
        .get(stack.url("/dashboard"))
        .header("accept", "text/html")
        .header("cookie", "sessionid=0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 303);
    assert_eq!(location(&html), "/login");
    let api = forged
        .get(stack.url("/api/me"))
        .header("cookie", "sessionid=0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    drop(browser);
}

#[tokio::test(flavor = "multi_thread")]
async fn lockout_ends_pending_login() {
    let stack = Stack::start("[rate_limit]\nsecond_factor_per_user = { limit = 3, window_secs = 60 }");
    stack.import("erin", SECRET);
    let browser = stack.browser();
    browser.login("erin", "explorer-42").await;
    for _ in 0..3 {
        assert_eq!(browser.submit_code("000000").await.status(), 401);
    }
    let locked = browser.submit_code(&oathtool_base32(SECRET, now())).await;
    assert_eq!(locked.status(), 429);
    let text = locked.text().await.unwrap();
    assert!(text.contains("Wait 1 minute"), "{text}");
    assert!(!browser.has_cookie("sessionid"));
    let again = browser.get("/_otpgate/challenge").await;
    assert_eq!(again.status(), 401, "the pending login survived the lockout");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_login_needs_code_too() {
    let stack = Stack::start("");
    stack.import("anna@example.org", SECRET);
    let browser = stack.browser();
    let response = browser
        .client
        .post(stack.url("/api/login"))
        .json(&serde_json::json!({ "username": "anna@example.org", "password": "anna-42" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(!browser.has_cookie("sessionid"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["second_factor_required"], true);
    let right = browser
        .client
        .post(stack.url("/_otpgate/challenge"))
        .json(&serde_json::json!({ "code": oathtool_base32(SECRET, now()) }))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let body: serde_json::Value = right.json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert!(browser.has_cookie("sessionid"));
    let me: serde_json::Value = browser.client.get(stack.url("/api/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["gateway_user"], "anna@example.org");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_closed_then_recovers() {
    let mut stack = Stack::start("");
    stack.import("alice", SECRET);
    stack.redis.stop();
    let browser = stack.browser();
    let response = browser.login("alice", "wonderland-42").await;
    assert_eq!(response.status(), 503);
    assert!(!browser.has_cookie("sessionid"), "the app session leaked during the outage");

    stack.redis.restart();
    // The connection manager reconnects on its own; allow it a few tries.
    let mut status = 0;
    for _ in 0..20 {
        let browser = stack.browser();
        status = browser.login("alice", "wonderland-42").await.status().as_u16();
        if status == 303 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(status, 303, "the gateway did not recover after Redis returned");

    stack.start_gateway();
    let browser = stack.browser();
    assert_eq!(browser.login("alice", "wonderland-42").await.status(), 303, "enrollment lost on gateway restart");
}

#[test]
fn import_rejects_bad_secret() {
    let stack = Stack::start("");
    let out = stack.otpgate(&["user", "import", "zed", "--secret", "NOT-BASE32-1!"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("base32"), "{stderr}");
    let status = stack.otpgate(&["user", "status", "zed"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no two-factor"));
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_name_outcomes_never_secrets() {
    let stack = Stack::start("");
    stack.import("alice", SECRET);
    let browser = stack.browser();
    browser.login("alice", "wonderland-42").await;
    let wrong = "000000";
    browser.submit_code(wrong).await;
    let code = oathtool_base32(SECRET, now());
    browser.submit_code(&code).await;
    let session_value = browser
        .cookies()
        .split(';')
        .find_map(|pair| pair.trim().strip_prefix("sessionid=").map(str::to_string))
        .expect("logged in");

    let log = std::fs::read_to_string(stack.config.with_extension("log")).unwrap();
    for line in ["outcome=\"second_factor_required\"", "outcome=\"code_rejected\"", "outcome=\"verified\""] {
        assert!(log.contains(line), "missing {line} in:\n{log}");
    }
    assert!(log.contains("user=alice"), "{log}");
    assert!(log.contains("address=127.0.0.1"), "{log}");
    for secret in ["wonderland-42", SECRET, code.as_str(), session_value.as_str(), crate::harness::softhsm::USER_PIN] {
        assert!(!log.contains(secret), "the log contains a secret ({} characters)", secret.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hsm_outage_fails_closed_then_recovers() {
    let stack = Stack::start("");
    stack.import("bob", SECRET);
    let tokens = stack.hsm.dir().join("tokens");
    let away = stack.hsm.dir().join("tokens-away");

    let browser = stack.browser();
    assert_eq!(browser.login("bob", "builder-42").await.status(), 303);
    // The token's files vanish, as when a network HSM goes away.
    std::fs::rename(&tokens, &away).unwrap();
    let response = browser.submit_code(&oathtool_base32(SECRET, now())).await;
    assert_eq!(response.status(), 503, "the HSM outage did not give 503");
    assert!(!browser.has_cookie("sessionid"), "the app session leaked during the HSM outage");

    std::fs::rename(&away, &tokens).unwrap();
    // The vault re-initialises the library at most once a second; allow it a few tries.
    let mut status = 0;
    for _ in 0..20 {
        let browser = stack.browser();
        if browser.login("bob", "builder-42").await.status() == 303 {
            status = browser.submit_code(&oathtool_base32(SECRET, now())).await.status().as_u16();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(status, 303, "no recovery after the HSM returned");
}
