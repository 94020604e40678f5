//! The admin listener: health, readiness, metrics and the admin API.

use crate::harness::services::ADMIN_TOKEN;
use crate::harness::stack::Stack;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_follow_redis() {
    let mut stack = Stack::start("");
    let client = reqwest::Client::new();
    // The admin service may start a moment after the proxy listener.
    let mut health = None;
    for _ in 0..40 {
        if let Ok(response) = client.get(stack.admin_url("/healthz")).send().await {
            health = Some(response.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(health.map(|s| s.as_u16()), Some(200));
    let ready = client.get(stack.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    stack.redis.stop();
    let ready = client.get(stack.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["redis"], "unreachable");
    assert_eq!(body["hsm"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_outcomes() {
    let stack = Stack::start("");
    let browser = stack.browser();
    browser.login("bob", "builder-42").await;
    let metrics = reqwest::get(stack.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("otpgate_outcomes_total{outcome=\"no_second_factor\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_needs_bearer_token() {
    let stack = Stack::start("");
    stack.import("alice", "JBSWY3DPEHPK3PXP");
    let client = reqwest::Client::new();
    let anonymous = client.get(stack.admin_url("/api/users/alice")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client.get(stack.admin_url("/api/users/alice")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    let status: serde_json::Value = client
        .get(stack.admin_url("/api/users/alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["enrolled"], true);

    let reset = client.delete(stack.admin_url("/api/users/alice")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(reset.status(), 200);
    let browser = stack.browser();
    assert_eq!(browser.login("alice", "wonderland-42").await.status(), 302, "a reset member still needs a code");
}

#[test]
fn user_reset_writes_audit_line() {
    let stack = Stack::start("");
    stack.import("carol", "JBSWY3DPEHPK3PXP");
    let out = stack.otpgate(&["user", "reset", "carol"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("audit"), "{log}");
    assert!(log.contains("carol"), "{log}");
    assert!(log.contains("reset"), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
}

#[test]
fn check_config_reports_literal_pin() {
    let stack = Stack::start("");
    let text = std::fs::read_to_string(&stack.config).unwrap().replace("pin_env = \"OTPGATE_TEST_HSM_PIN\"", "pin = \"1234\"");
    let bad = stack.config.with_file_name("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = crate::harness::services::otpgate(&stack.hsm, &["check-config", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hsm.pin"), "{stderr}");
    assert!(stderr.contains("pin_env"), "{stderr}");
    let good = stack.otpgate(&["check-config"]);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
}
