//! Two gateway instances on one Redis and one HSM token.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::stack::Stack;
use crate::harness::totp::oathtool_base32;

const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn login_started_on_one_instance_finishes_on_other() {
    let stack = Stack::start("");
    stack.import("alice", SECRET);
    let (_second, second_url) = stack.second_gateway();

    let first = stack.browser();
    assert_eq!(first.login("alice", "wonderland-42").await.status(), 303);
    // The same browser (its cookies) now reaches the other instance.
    let jar_cookies = first.cookies();
    let csrf_page = first
        .client
        .get(format!("{second_url}/_otpgate/challenge"))
        .header("cookie", &jar_cookies)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::harness::stack::csrf_in(&csrf_page);
    let done = first
        .client
        .post(format!("{second_url}/_otpgate/challenge"))
        .header("cookie", &jar_cookies)
        .form(&[("code", oathtool_base32(SECRET, now()).as_str()), ("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303, "the second instance could not finish the login");
    assert!(done.headers().get_all("set-cookie").iter().any(|v| v.to_str().unwrap().starts_with("sessionid=")));
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_reaches_other_instance_within_cache_time() {
    let stack = Stack::start("");
    let (_second, second_url) = stack.second_gateway();
    let browser = stack.browser();
    assert_eq!(browser.login("bob", "builder-42").await.status(), 302);
    let cookies = browser.cookies();
    let on_second = |path: &'static str| {
        let client = browser.client.clone();
        let url = format!("{second_url}{path}");
        let cookies = cookies.clone();
        async move { client.get(url).header("accept", "text/html").header("cookie", cookies).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(on_second("/dashboard").await, 200, "the flagged session was not valid on the other instance");

    browser.get("/logout").await;
    // gateway.session_cache_ms defaults to 1000: after that the other
    // instance must have dropped the session.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(on_second("/dashboard").await, 303, "the logout did not reach the other instance");
}
