//! Tests that run the router on a loopback port and send raw HTTP/1.1 requests, so
//! they see status lines, header order and bodies exactly as a gateway would.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const FORM: &str = "application/x-www-form-urlencoded";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// Returns the value of cookie `name` from the first `Set-Cookie` that sets it.
    fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().into_iter().find_map(|header| {
            let pair = header.split(';').next()?;
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("response body is not JSON ({error}): {}", self.body))
    }
}

async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(AppState::default()))
            .await
            .unwrap();
    });
    addr
}

/// Sends one request with `Connection: close` and reads the whole response.
async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();

    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Loads the login form and returns the CSRF token from its cookie.
async fn fetch_csrf_token(addr: SocketAddr) -> String {
    let form = send(addr, "GET", "/login", &[], b"").await;
    assert_eq!(form.status, 200);
    let token = form.cookie(CSRF_COOKIE).expect("csrftoken cookie");
    assert!(form
        .body
        .contains(&format!("name=\"csrf_token\" value=\"{token}\"")));
    token
}

async fn post_login(addr: SocketAddr, target: &str, cookie: &str, body: &str) -> Reply {
    let headers = [("Content-Type", FORM), ("Cookie", cookie)];
    send(addr, "POST", target, &headers, body.as_bytes()).await
}

async fn form_login(addr: SocketAddr, username: &str, password: &str) -> Reply {
    let token = fetch_csrf_token(addr).await;
    let body = format!("username={username}&password={password}&csrf_token={token}");
    post_login(addr, "/login", &format!("csrftoken={token}"), &body).await
}

#[tokio::test]
async fn form_login_sets_cookies_in_order() {
    let addr = start().await;
    let reply = form_login(addr, "alice", "wonderland-42").await;

    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("location"), Some("/dashboard"));
    let cookies = reply.set_cookies();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let session_id = reply.cookie(SESSION_COOKIE).unwrap();
    assert_eq!(session_id.len(), 64);
    assert_eq!(
        cookies[0],
        format!("sessionid={session_id}; Path=/; HttpOnly; SameSite=Lax")
    );
    assert!(cookies[1].starts_with("last_login="), "{}", cookies[1]);
    assert!(
        cookies[1].ends_with("; Path=/; Max-Age=0"),
        "{}",
        cookies[1]
    );
}

#[tokio::test]
async fn email_username_can_log_in() {
    let addr = start().await;
    let reply = form_login(addr, "anna%40example.org", "anna-42").await;
    assert_eq!(reply.status, 302);
    assert!(reply.cookie(SESSION_COOKIE).is_some());
}

#[tokio::test]
async fn login_redirects_to_local_next_only() {
    let addr = start().await;
    let token = fetch_csrf_token(addr).await;
    let cookie = format!("csrftoken={token}");
    let body = format!("username=bob&password=builder-42&csrf_token={token}");

    let cases = [
        ("/login?next=/profile%3Ftab%3D1", "/profile?tab=1"),
        ("/login?next=//evil.example/", "/dashboard"),
        ("/login?next=https://evil.example/", "/dashboard"),
        ("/login?next=profile", "/dashboard"),
    ];
    for (target, expected) in cases {
        let reply = post_login(addr, target, &cookie, &body).await;
        assert_eq!(reply.status, 302, "{target}");
        assert_eq!(reply.header("location"), Some(expected), "{target}");
    }
}

#[tokio::test]
async fn login_form_keeps_next_in_action() {
    let addr = start().await;
    let reply = send(addr, "GET", "/login?next=/profile%3Ftab%3D1", &[], b"").await;
    assert!(
        reply
            .body
            .contains("action=\"/login?next=/profile%3Ftab%3D1\""),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn csrf_mismatch_is_forbidden() {
    let addr = start().await;
    let token = fetch_csrf_token(addr).await;
    let body = format!("username=alice&password=wonderland-42&csrf_token={token}");

    let other_cookie = post_login(addr, "/login", "csrftoken=other", &body).await;
    assert_eq!(other_cookie.status, 403);
    assert!(other_cookie.set_cookies().is_empty());

    let no_cookie = post_login(addr, "/login", "theme=dark", &body).await;
    assert_eq!(no_cookie.status, 403);
    assert!(no_cookie.body.contains("csrftoken cookie is missing"));

    let no_field = post_login(
        addr,
        "/login",
        &format!("csrftoken={token}"),
        "username=alice",
    )
    .await;
    assert_eq!(no_field.status, 403);
}

#[tokio::test]
async fn wrong_password_shows_form_again() {
    let addr = start().await;
    let reply = form_login(addr, "alice", "wrong").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("Invalid username or password."));
    assert!(reply.body.contains("name=\"username\" value=\"alice\""));
    assert!(reply.set_cookies().is_empty());
}

#[tokio::test]
async fn session_grants_access_until_logout() {
    let addr = start().await;
    let session_id = form_login(addr, "carol", "singer-42")
        .await
        .cookie(SESSION_COOKIE)
        .unwrap();
    let cookie = format!("sessionid={session_id}");

    let page = send(addr, "GET", "/dashboard", &[("Cookie", &cookie)], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Welcome, carol"));
    assert!(!page.body.contains("Gateway identity"));

    let with_gateway = [("Cookie", cookie.as_str()), ("X-Otpgate-User", "carol@gw")];
    let page = send(addr, "GET", "/dashboard", &with_gateway, b"").await;
    assert!(page.body.contains("Gateway identity: carol@gw"));

    let me = send(addr, "GET", "/api/me", &with_gateway, b"").await;
    assert_eq!(me.status, 200);
    assert_eq!(
        me.json(),
        json!({ "user": "carol", "gateway_user": "carol@gw" })
    );

    let logout = send(addr, "POST", "/logout", &[("Cookie", &cookie)], b"").await;
    assert_eq!(logout.status, 302);
    assert_eq!(logout.header("location"), Some("/login"));
    assert_eq!(logout.set_cookies(), ["sessionid=; Path=/; Max-Age=0"]);

    let page = send(addr, "GET", "/profile", &[("Cookie", &cookie)], b"").await;
    assert_eq!(page.status, 302);
    assert_eq!(page.header("location"), Some("/login"));
}

#[tokio::test]
async fn protected_routes_without_session() {
    let addr = start().await;
    for path in ["/dashboard", "/profile"] {
        let reply = send(addr, "GET", path, &[("Cookie", "sessionid=unknown")], b"").await;
        assert_eq!(reply.status, 302, "{path}");
        assert_eq!(reply.header("location"), Some("/login"), "{path}");
    }

    let api = send(addr, "GET", "/api/me", &[], b"").await;
    assert_eq!(api.status, 401);
    assert_eq!(api.json()["error"], "authentication required");
}

#[tokio::test]
async fn api_login_results() {
    let addr = start().await;
    let json_type = [("Content-Type", "application/json")];

    let ok = send(
        addr,
        "POST",
        "/api/login",
        &json_type,
        br#"{"username":"dave","password":"diver-42"}"#,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!({ "ok": true, "user": "dave" }));
    let session_id = ok.cookie(SESSION_COOKIE).unwrap();
    assert_eq!(
        ok.set_cookies(),
        [format!(
            "sessionid={session_id}; Path=/; HttpOnly; SameSite=Lax"
        )]
    );

    let wrong = send(
        addr,
        "POST",
        "/api/login",
        &json_type,
        br#"{"username":"dave","password":"x"}"#,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json(), json!({ "ok": false }));
    assert!(wrong.set_cookies().is_empty());

    let malformed = send(addr, "POST", "/api/login", &json_type, b"{").await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["ok"], false);
}

#[tokio::test]
async fn echo_reports_request() {
    let addr = start().await;
    let headers = [("X-Test", "one"), ("x-test", "two")];
    let reply = send(addr, "PUT", "/echo/a%2Fb?x=1&y", &headers, b"hello").await;
    assert_eq!(reply.status, 200);

    let echo = reply.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/a%2Fb?x=1&y");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["body_sha256"], sha256_hex(b"hello"));
    assert_eq!(echo["headers"]["x-test"], json!(["one", "two"]));
    assert_eq!(echo["headers"]["content-length"], json!(["5"]));

    for path in ["/echo", "/echo/", "/echo/deep/path"] {
        let reply = send(addr, "GET", path, &[], b"").await;
        assert_eq!(reply.json()["path"], path);
    }
}

#[tokio::test]
async fn last_login_records_large_body() {
    let addr = start().await;
    let before = send(addr, "GET", "/_demo/last-login", &[], b"")
        .await
        .json();
    assert_eq!(
        before,
        json!({ "count": 0, "body_sha256": null, "body_len": null, "raw_path": null })
    );

    let body = format!(
        "username=alice&password=x&padding={}",
        "a".repeat(100 * 1024)
    );
    let reply = post_login(addr, "/login?next=/profile", "", &body).await;
    assert_eq!(reply.status, 403);
    send(addr, "DELETE", "/login", &[], b"").await;

    let record = send(addr, "GET", "/_demo/last-login", &[], b"")
        .await
        .json();
    assert_eq!(record["count"], 2);
    assert_eq!(record["body_len"], body.len());
    assert_eq!(record["body_sha256"], sha256_hex(body.as_bytes()));
    assert_eq!(record["raw_path"], "/login?next=/profile");
}

#[tokio::test]
async fn body_over_limit_is_rejected() {
    let addr = start().await;
    let body = vec![b'a'; MAX_BODY_BYTES + 1];
    let reply = send(addr, "POST", "/echo", &[], &body).await;
    assert_eq!(reply.status, 413);
}

#[tokio::test]
async fn request_log_lists_raw_paths() {
    let addr = start().await;
    send(addr, "GET", "/about?x=%41", &[], b"").await;
    send(addr, "POST", "/missing", &[], b"").await;
    send(addr, "GET", "/_demo/last-login", &[], b"").await;

    let log = send(addr, "GET", "/_demo/requests", &[], b"").await.json();
    assert_eq!(log, json!(["GET /about?x=%41", "POST /missing"]));
}

#[tokio::test]
async fn public_pages_and_not_found() {
    let addr = start().await;
    for path in ["/", "/about"] {
        let reply = send(addr, "GET", path, &[], b"").await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.body.starts_with("<!doctype html>"), "{path}");
    }

    let css = send(addr, "GET", "/static/style.css", &[], b"").await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));

    let missing = send(addr, "GET", "/nope", &[], b"").await;
    assert_eq!(missing.status, 404);
}
