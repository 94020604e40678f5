//! Hostile input and races through the running gateway: each case must
//! fail safe.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::qr::{decode_png, uri_param};
use crate::harness::stack::{csrf_in, Browser, Stack};
use crate::harness::totp::{oathtool_base32, oathtool_totp};

const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const GENEROUS: &str = "[rate_limit]\nsecond_factor_per_user = { limit = 200, window_secs = 60 }\nsecond_factor_per_address = { limit = 200, window_secs = 60 }\npassword_per_user = { limit = 200, window_secs = 60 }\npassword_per_address = { limit = 200, window_secs = 60 }";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn location(response: &reqwest::Response) -> String {
    response.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Reads the gateway's count of TOTP verifications sent to the HSM.
async fn hsm_verifications(stack: &Stack) -> u64 {
    let metrics = reqwest::get(stack.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .find(|line| line.starts_with("otpgate_hsm_operations_total{operation=\"totp_verify\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

async fn pending_login(stack: &Stack, user: &str, password: &str) -> Browser {
    let browser = stack.browser();
    assert_eq!(browser.login(user, password).await.status(), 303);
    browser
}

fn arabic_indic(code: &str) -> String {
    code.chars().map(|c| char::from_u32(0x0660 + c.to_digit(10).unwrap()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_codes_rejected_without_hsm_call() {
    let stack = Stack::start(GENEROUS);
    stack.import("alice", SECRET);
    let browser = pending_login(&stack, "alice", "wonderland-42").await;
    let code = oathtool_base32(SECRET, now());
    let before = hsm_verifications(&stack).await;
    let variants = [
        code[1..].to_string(),
        format!("0{code}"),
        format!("{} ", &code[1..]),
        arabic_indic(&code),
        format!("{code}abc"),
        format!("abc{code}"),
        format!("{code}\u{00a0}"),
    ];
    for variant in &variants {
        assert_eq!(browser.submit_code(variant).await.status(), 401, "{variant:?} was accepted");
    }
    assert_eq!(hsm_verifications(&stack).await, before, "a malformed code reached the HSM");
    assert!(!browser.has_cookie("sessionid"));
    assert_eq!(browser.submit_code(&code).await.status(), 303, "the valid code failed after the malformed ones");
}

#[tokio::test(flavor = "multi_thread")]
async fn code_with_letters_rejected() {
    let stack = Stack::start(GENEROUS);
    stack.import("bob", SECRET);
    let browser = pending_login(&stack, "bob", "builder-42").await;
    let code = oathtool_base32(SECRET, now());
    assert_eq!(browser.submit_code(&format!("{code}abc")).await.status(), 401);
    assert_eq!(browser.submit_code(&format!("x{code}")).await.status(), 401);
    assert!(!browser.has_cookie("sessionid"));
}

#[tokio::test(flavor = "multi_thread")]
async fn spaced_code_and_whitespace_accepted() {
    let stack = Stack::start(GENEROUS);
    stack.import("carol", SECRET);
    let browser = pending_login(&stack, "carol", "singer-42").await;
    let code = oathtool_base32(SECRET, now());
    assert_eq!(browser.submit_code(&format!("\t{} {} ", &code[..3], &code[3..])).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn phone_clock_ahead_accepted() {
    let stack = Stack::start(GENEROUS);
    stack.import("dave", SECRET);
    let browser = pending_login(&stack, "dave", "diver-42").await;
    // The server is 20 s behind the phone: the phone shows the code of now + 20 s.
    assert_eq!(browser.submit_code(&oathtool_base32(SECRET, now() + 20)).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn used_code_rejected_next_step() {
    let stack = Stack::start(GENEROUS);
    stack.import("erin", SECRET);
    let first = pending_login(&stack, "erin", "explorer-42").await;
    let code = oathtool_base32(SECRET, now());
    let step = now() / 30;
    assert_eq!(first.submit_code(&code).await.status(), 303);

    // Wait until the code's step is the previous one (still in the window).
    while now() / 30 == step {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let second = pending_login(&stack, "erin", "explorer-42").await;
    assert_eq!(second.submit_code(&code).await.status(), 401, "a used code was accepted in the next step");
}

#[tokio::test(flavor = "multi_thread")]
async fn older_unused_code_after_newer_rejected() {
    let stack = Stack::start(GENEROUS);
    stack.import("alice", SECRET);
    let first = pending_login(&stack, "alice", "wonderland-42").await;
    assert_eq!(first.submit_code(&oathtool_base32(SECRET, now())).await.status(), 303);
    let second = pending_login(&stack, "alice", "wonderland-42").await;
    assert_eq!(second.submit_code(&oathtool_base32(SECRET, now() - 30)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_secret_forms_match_oathtool() {
    let stack = Stack::start(GENEROUS);
    let cases = [
        ("alice", "wonderland-42", SECRET.to_lowercase()),
        ("bob", "builder-42", format!("{SECRET}====")),
        ("carol", "singer-42", SECRET.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(" ")),
        ("dave", "diver-42", "JBSWY3DPEHPK3PXP".to_string()),
    ];
    for (user, password, secret) in &cases {
        stack.import(user, secret);
        let canonical: String = secret.to_uppercase().replace([' ', '='], "");
        let browser = pending_login(&stack, user, password).await;
        let code = oathtool_base32(&canonical, now());
        assert_eq!(browser.submit_code(&code).await.status(), 303, "{user}: secret {secret:?}");
    }
}

async fn start_enrollment(stack: &Stack, user: &str, password: &str) -> (Browser, String, String) {
    let browser = stack.browser();
    assert_eq!(browser.login(user, password).await.status(), 302);
    let page = browser.post_form("/_otpgate/settings", "/_otpgate/enroll/start", &[("password", password)]).await;
    let csrf = csrf_in(&page.text().await.unwrap());
    let png = browser.get("/_otpgate/enroll/qr.png").await.bytes().await.unwrap();
    (browser, decode_png(&png), csrf)
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_and_account_encoded_once() {
    let stack = Stack::start_with("issuer = \"Acme: Ops & Co\"", GENEROUS);
    let (_browser, uri, _) = start_enrollment(&stack, "anna@example.org", "anna-42").await;
    let label = uri.strip_prefix("otpauth://totp/").unwrap().split('?').next().unwrap();
    let parts: Vec<&str> = label.split(':').collect();
    assert_eq!(parts.len(), 2, "a raw ':' inside a label part: {label}");
    assert_eq!(parts[0], "Acme%3A%20Ops%20%26%20Co");
    assert_eq!(parts[1], "anna%40example.org");
    let decode = |part: &str| percent_encoding::percent_decode_str(part).decode_utf8().unwrap().to_string();
    assert_eq!(decode(parts[0]), "Acme: Ops & Co");
    assert_eq!(decode(parts[1]), "anna@example.org");
    assert_eq!(uri_param(&uri, "issuer").as_deref(), Some("Acme: Ops & Co"));
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_algorithm_used_and_verified() {
    let stack = Stack::start(&format!("{GENEROUS}\n[totp]\nalgorithm = \"SHA256\""));
    let (browser, uri, csrf) = start_enrollment(&stack, "bob", "builder-42").await;
    assert_eq!(uri_param(&uri, "algorithm").as_deref(), Some("SHA256"));
    let secret = uri_param(&uri, "secret").unwrap();
    let hex = data_encoding::HEXLOWER.encode(&data_encoding::BASE32_NOPAD.decode(secret.as_bytes()).unwrap());
    let submit = |code: String| {
        let client = browser.client.clone();
        let url = stack.url("/_otpgate/enroll/verify");
        let csrf = csrf.clone();
        async move { client.post(url).form(&[("code", code.as_str()), ("csrf_token", csrf.as_str())]).send().await.unwrap() }
    };
    let sha1 = oathtool_base32(&secret, now());
    let sha256 = oathtool_totp(&hex, otpgate_config::Algorithm::SHA256, 6, 30, now());
    if sha1 != sha256 {
        assert_eq!(submit(sha1).await.status(), 401, "a SHA-1 code confirmed a SHA-256 enrollment");
        let status = stack.otpgate(&["user", "status", "bob"]);
        assert!(String::from_utf8_lossy(&status.stdout).contains("no two-factor"));
    }
    assert_eq!(submit(sha256).await.status(), 200);
    let status = stack.otpgate(&["user", "status", "bob"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("SHA256"), "{}", String::from_utf8_lossy(&status.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_are_sha1_six_digits_thirty_seconds() {
    let stack = Stack::start(GENEROUS);
    let (_browser, uri, _) = start_enrollment(&stack, "carol", "singer-42").await;
    assert_eq!(uri_param(&uri, "algorithm").as_deref(), Some("SHA1"));
    assert_eq!(uri_param(&uri, "digits").as_deref(), Some("6"));
    assert_eq!(uri_param(&uri, "period").as_deref(), Some("30"));
    let secret = uri_param(&uri, "secret").unwrap();
    assert_eq!(data_encoding::BASE32_NOPAD.decode(secret.as_bytes()).unwrap().len(), 20, "seeds are 160 bits");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_totp_single_success() {
    let stack = Stack::start(GENEROUS);
    stack.import("alice", SECRET);
    let mut browsers = Vec::new();
    for _ in 0..30 {
        browsers.push(pending_login(&stack, "alice", "wonderland-42").await);
    }
    let code = oathtool_base32(SECRET, now());
    let results = futures::future::join_all(browsers.iter().map(|b| b.submit_code(&code))).await;
    let successes = results.iter().filter(|r| r.status() == 303).count();
    assert_eq!(successes, 1, "{:?}", results.iter().map(|r| r.status()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_backup_code_consumed_once() {
    let stack = Stack::start(GENEROUS);
    let (enrolled, secret, codes) = {
        let (browser, uri, csrf) = start_enrollment(&stack, "bob", "builder-42").await;
        let secret = uri_param(&uri, "secret").unwrap();
        let page = browser.submit_enrollment(&oathtool_base32(&secret, now()), &csrf).await
            .text()
            .await
            .unwrap();
        (browser, secret, crate::harness::stack::backup_codes_in(&page))
    };
    let _ = secret;
    let mut browsers = Vec::new();
    for _ in 0..30 {
        browsers.push(pending_login(&stack, "bob", "builder-42").await);
    }
    let results = futures::future::join_all(browsers.iter().map(|b| b.submit_backup(&codes[7]))).await;
    let successes = results.iter().filter(|r| r.status() == 303).count();
    assert_eq!(successes, 1, "{:?}", results.iter().map(|r| r.status()).collect::<Vec<_>>());
    let settings = enrolled.get("/_otpgate/settings").await.text().await.unwrap();
    assert!(settings.contains("You have 9 unused backup codes"), "not exactly one code consumed: {settings}");
}

async fn redis_connection(stack: &Stack) -> redis::aio::MultiplexedConnection {
    redis::Client::open(stack.redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_counters_always_expire() {
    let stack = Stack::start("");
    stack.import("carol", SECRET);
    let mut redis = redis_connection(&stack).await;
    // A counter left without expiry (a crash between INCR and EXPIRE in an
    // older design) is repaired by the next count.
    let stale_key = "otpgate:rl:2f:{u:carol}";
    let _: () = redis::cmd("SET").arg(stale_key).arg(2).query_async(&mut redis).await.unwrap();

    let browser = pending_login(&stack, "carol", "singer-42").await;
    browser.submit_code("000000").await;

    let keys: Vec<String> = redis::cmd("KEYS").arg("otpgate:rl:*").query_async(&mut redis).await.unwrap();
    assert!(keys.len() >= 4, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(ttl > 0, "{key} has no expiry (TTL {ttl})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_of_wrong_codes_mostly_refused_by_counter() {
    let stack = Stack::start("[rate_limit]\nsecond_factor_per_user = { limit = 5, window_secs = 60 }\nsecond_factor_per_address = { limit = 100, window_secs = 60 }");
    stack.import("dave", SECRET);
    let browser = pending_login(&stack, "dave", "diver-42").await;
    let csrf = csrf_in(&browser.get("/_otpgate/challenge").await.text().await.unwrap());
    let before = hsm_verifications(&stack).await;
    let requests = (0..20).map(|i| {
        let client = browser.client.clone();
        let url = stack.url("/_otpgate/challenge");
        let csrf = csrf.clone();
        async move {
            client
                .post(url)
                .form(&[("code", format!("{:06}", 100000 + i).as_str()), ("csrf_token", csrf.as_str())])
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures::future::join_all(requests).await;
    let checked = hsm_verifications(&stack).await - before;
    assert!(checked <= 5, "{checked} wrong codes reached the HSM; statuses {statuses:?}");
    assert!(statuses.iter().any(|s| s.as_u16() == 429), "{statuses:?}");
}

async fn wrong_code_from(stack: &Stack, browser: &Browser, forwarded_for: &str) -> u16 {
    let csrf = csrf_in(&browser.get("/_otpgate/challenge").await.text().await.unwrap());
    browser
        .client
        .post(stack.url("/_otpgate/challenge"))
        .header("x-forwarded-for", forwarded_for)
        .form(&[("code", "000000"), ("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_spoofing_does_not_reset_limit() {
    let stack = Stack::start("[rate_limit]\nsecond_factor_per_user = { limit = 100, window_secs = 60 }\nsecond_factor_per_address = { limit = 3, window_secs = 60 }\npassword_per_user = { limit = 100, window_secs = 60 }\npassword_per_address = { limit = 100, window_secs = 60 }");
    stack.import("erin", SECRET);
    let browser = pending_login(&stack, "erin", "explorer-42").await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(wrong_code_from(&stack, &browser, &format!("203.0.113.{i}")).await);
    }
    assert_eq!(statuses, vec![401, 401, 401, 429], "random X-Forwarded-For reset the per-address limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxy_uses_rightmost_untrusted() {
    let stack = Stack::start("[gateway]\ntrusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nsecond_factor_per_user = { limit = 100, window_secs = 60 }\nsecond_factor_per_address = { limit = 2, window_secs = 60 }\npassword_per_user = { limit = 100, window_secs = 60 }\npassword_per_address = { limit = 100, window_secs = 60 }");
    stack.import("alice", SECRET);
    let browser = pending_login(&stack, "alice", "wonderland-42").await;
    // The client invents the left part; the trusted proxy appended the right one.
    assert_eq!(wrong_code_from(&stack, &browser, "1.1.1.1, 198.51.100.7").await, 401);
    assert_eq!(wrong_code_from(&stack, &browser, "2.2.2.2, 198.51.100.7").await, 401);
    assert_eq!(wrong_code_from(&stack, &browser, "3.3.3.3, 198.51.100.7").await, 429);
    let other = pending_login(&stack, "alice", "wonderland-42").await;
    assert_eq!(wrong_code_from(&stack, &other, "198.51.100.8").await, 401, "another client address was limited");
}

async fn demo_login_count(stack: &Stack) -> u64 {
    let last: serde_json::Value = reqwest::get(stack.url("/_demo/last-login")).await.unwrap().json().await.unwrap();
    last["count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn login_path_variants_intercepted_or_rejected() {
    let stack = Stack::start(GENEROUS);
    stack.import("alice", SECRET);
    for variant in ["/LOGIN", "/login/", "//login", "/./login", "/%6Cogin", "/login;jsessionid=x"] {
        let browser = stack.browser();
        let page = browser.get("/login").await.text().await.unwrap();
        let csrf = csrf_in(&page);
        let response = browser
            .client
            .post(format!("{}{variant}", stack.url("")))
            .form(&[("username", "alice"), ("password", "wonderland-42"), ("csrf_token", csrf.as_str())])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            status == 400 || (status == 303 && location(&response) == "/_otpgate/challenge") || status == 404,
            "{variant}: status {status}, location {:?}",
            location(&response)
        );
        assert!(!browser.has_cookie("sessionid"), "{variant} gave out the app session without a code");
    }
}

/// Sends one request with the path exactly as given (HTTP clients would
/// normalise `%2e%2e` and backslashes) and returns the status code.
fn raw_status(port: u16, method: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_traversal_rejected() {
    let stack = Stack::start("");
    let before = demo_login_count(&stack).await;
    for path in ["/static/..%2f..%2flogin", "/static/%2e%2e/dashboard", "/static/..%5clogin", "/static\\..\\login", "/static/%2E%2E/login"] {
        assert_eq!(raw_status(stack.gateway_port, "POST", path, "username=alice"), 400, "{path}");
    }
    assert_eq!(demo_login_count(&stack).await, before, "a traversal reached the login endpoint");
    // Plain dot segments are resolved before any rule, so this is the login route.
    assert_eq!(raw_status(stack.gateway_port, "POST", "/static/../login", "username=alice&password=x"), 403);
    assert_eq!(demo_login_count(&stack).await, before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_header_variants_stripped() {
    let stack = Stack::start("");
    let spoof = |request: reqwest::RequestBuilder| {
        request
            .header("X-Otpgate-User", "admin")
            .header("x_otpgate_user", "admin")
            .header("X.Otpgate.User", "admin")
            .header("Connection", "X-Otpgate-User")
    };
    let anonymous = reqwest::Client::new();
    let echo: serde_json::Value = spoof(anonymous.post(stack.url("/echo"))).send().await.unwrap().json().await.unwrap();
    let headers = echo["headers"].as_object().unwrap();
    for name in headers.keys() {
        let folded = name.replace(['_', '.'], "-");
        assert_ne!(folded, "x-otpgate-user", "{name} reached the app: {headers:?}");
    }
    assert!(!headers.get("connection").is_some_and(|v| v.to_string().to_lowercase().contains("otpgate")), "{headers:?}");

    let browser = stack.browser();
    browser.login("bob", "builder-42").await;
    let echo: serde_json::Value = spoof(browser.client.post(stack.url("/echo"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(echo["headers"]["x-otpgate-user"], serde_json::json!(["bob"]), "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_header_carries_non_ascii_name_percent_encoded() {
    let stack = Stack::start("");
    let browser = stack.browser();
    browser.login("zoë", "zoe-42").await;
    let response = browser.client.get(stack.url("/echo")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-otpgate-user"], serde_json::json!(["zo%C3%AB"]), "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_header_name_is_configurable() {
    let stack = Stack::start_with("identity_header = \"X-Member\"", "");
    let browser = stack.browser();
    browser.login("bob", "builder-42").await;
    let request = browser.client.get(stack.url("/echo")).header("x_member", "admin").header("X-Otpgate-User", "carol");
    let echo: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    assert_eq!(echo["headers"]["x-member"], serde_json::json!(["bob"]), "{echo}");
    assert!(echo["headers"].get("x_member").is_none(), "{echo}");
    // Not the configured header, so the gateway neither sets nor removes it.
    assert_eq!(echo["headers"]["x-otpgate-user"], serde_json::json!(["carol"]), "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_login_body_forwarded_whole_or_413() {
    let stack = Stack::start("");
    let client = reqwest::Client::new();
    let padding = "x".repeat(60 * 1024);
    let body = format!("username=alice&password=wrong&csrf_token=t&padding={padding}");
    client.post(stack.url("/login")).header("content-type", "application/x-www-form-urlencoded").body(body.clone()).send().await.unwrap();
    let last: serde_json::Value = reqwest::get(stack.url("/_demo/last-login")).await.unwrap().json().await.unwrap();
    let expected = data_encoding::HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    assert_eq!(last["body_sha256"], expected, "the login body was changed on the way");
    assert_eq!(last["body_len"], body.len());

    let before = demo_login_count(&stack).await;
    let huge = format!("username=alice&password=wrong&padding={}", "x".repeat(100 * 1024));
    let response = client.post(stack.url("/login")).header("content-type", "application/x-www-form-urlencoded").body(huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(demo_login_count(&stack).await, before, "a truncated body reached the login endpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_login_body_under_raised_limit_forwarded_whole() {
    let stack = Stack::start_with("max_login_body_bytes = 131072", "");
    let body = format!("username=alice&password=wrong&csrf_token=t&padding={}", "y".repeat(100 * 1024));
    let response = reqwest::Client::new()
        .post(stack.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "the demo app answers a wrong CSRF token with 403");
    let last: serde_json::Value = reqwest::get(stack.url("/_demo/last-login")).await.unwrap().json().await.unwrap();
    let expected = data_encoding::HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    assert_eq!(last["body_sha256"], expected, "the 100 KiB login body was changed on the way");
    assert_eq!(last["body_len"], body.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_return_targets_become_root() {
    let stack = Stack::start(GENEROUS);
    let cases = [
        ("alice", "wonderland-42", "//evil.example/"),
        ("bob", "builder-42", "/\\evil.example"),
        ("carol", "singer-42", "https://evil.example/"),
        ("dave", "diver-42", "/%2F%2Fevil.example"),
    ];
    for (user, password, target) in cases {
        stack.import(user, SECRET);
        let browser = stack.browser();
        let csrf = csrf_in(&browser.get("/login").await.text().await.unwrap());
        let encoded: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
        let response = browser
            .client
            .post(format!("{}/login?next_unchecked={encoded}", stack.url("")))
            .form(&[("username", user), ("password", password), ("csrf_token", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{target}");
        let done = browser.submit_code(&oathtool_base32(SECRET, now())).await;
        assert_eq!(done.status(), 303, "{target}");
        assert_eq!(location(&done), "/", "{target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_enrollment_code_grants_nothing() {
    let stack = Stack::start_with("policy = \"required\"", GENEROUS);
    let browser = stack.browser();
    assert_eq!(browser.login("erin", "explorer-42").await.status(), 303);
    let page = browser.get("/_otpgate/enroll").await.text().await.unwrap();
    let csrf = csrf_in(&page);
    let wrong = browser.submit_enrollment("000000", &csrf).await;
    assert_eq!(wrong.status(), 401);
    let tab = browser.get("/dashboard").await;
    assert_eq!(tab.status(), 303);
    assert!(!browser.has_cookie("sessionid"));
    let status = stack.otpgate(&["user", "status", "erin"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no two-factor"));
}

#[tokio::test(flavor = "multi_thread")]
async fn copied_record_rejected() {
    let stack = Stack::start(GENEROUS);
    stack.import("alice", SECRET);
    let mut redis = redis_connection(&stack).await;
    let record: Vec<u8> = redis::cmd("GET").arg("otpgate:record:{u:alice}").query_async(&mut redis).await.unwrap();
    let _: () = redis::cmd("SET").arg("otpgate:record:{u:bob}").arg(record).query_async(&mut redis).await.unwrap();

    let browser = pending_login(&stack, "bob", "builder-42").await;
    let response = browser.submit_code(&oathtool_base32(SECRET, now())).await;
    assert_ne!(response.status(), 303, "a record copied from alice opened bob's account");
    assert!(!browser.has_cookie("sessionid"));
    let status = stack.otpgate(&["user", "status", "bob"]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("integrity check"), "{}", String::from_utf8_lossy(&status.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn username_case_variants_need_code() {
    let stack = Stack::start(GENEROUS);
    stack.import("alice", SECRET);
    for variant in ["ALICE", "Alice", " alice "] {
        let browser = stack.browser();
        let response = browser.login(variant, "wonderland-42").await;
        assert_eq!(response.status(), 303, "{variant:?} logged in without a code");
        assert!(!browser.has_cookie("sessionid"), "{variant:?} got the app session without a code");
    }
}
