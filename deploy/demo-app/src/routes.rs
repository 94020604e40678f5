//! HTTP routes and handlers.
//!
//! | Route                         | Access    | Purpose                                   |
//! |-------------------------------|-----------|-------------------------------------------|
//! | `GET /`, `/about`             | public    | plain pages                               |
//! | `GET /static/style.css`       | public    | stylesheet                                |
//! | `GET /login`, `POST /login`   | public    | login form with CSRF cookie               |
//! | `POST /api/login`             | public    | JSON login without CSRF                   |
//! | `GET`/`POST /logout`          | public    | ends the session                          |
//! | `GET /dashboard`, `/profile`  | session   | HTML, redirect to `/login` without one    |
//! | `GET /api/me`                 | session   | JSON, 401 without a session               |
//! | any method `/echo`, `/echo/*` | public    | returns what the request contained        |
//! | `GET /_demo/last-login`       | public    | what reached `/login`                     |
//! | `GET /_demo/requests`         | public    | last 100 requests outside `/_demo/`       |

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Form, FromRequest, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{AppendHeaders, Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::members::{authenticate, constant_time_eq};
use crate::pages::{self, LoginForm};
use crate::request::{
    cookie_value, header_text, is_local_path, percent_encode_query_value, raw_path, sha256_hex,
};
use crate::state::{random_token, AppState};

/// Maximum request body size for every route, so a 100 KiB login POST is read fully.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const SESSION_COOKIE: &str = "sessionid";
const CSRF_COOKIE: &str = "csrftoken";
const GATEWAY_USER_HEADER: &str = "x-otpgate-user";
const DEFAULT_LANDING_PAGE: &str = "/dashboard";
const INVALID_CREDENTIALS: &str = "Invalid username or password.";

/// Builds the router with all routes, the request log and the body size limit.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/about", get(about))
        .route("/static/style.css", get(stylesheet))
        .route("/login", get(show_login).post(submit_login))
        .route("/api/login", post(api_login))
        .route("/logout", get(logout).post(logout))
        .route("/dashboard", get(dashboard))
        .route("/profile", get(profile))
        .route("/api/me", get(api_me))
        .route("/echo", any(echo))
        .route("/echo/", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/_demo/last-login", get(last_login))
        .route("/_demo/requests", get(recent_requests))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Counts requests to `/login` and logs every request except those to `/_demo/`,
/// so that reading the log does not change it.
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/login" {
        state.count_login_request();
    }
    if !path.starts_with("/_demo/") {
        state.log_request(format!("{} {}", request.method(), raw_path(request.uri())));
    }
    next.run(request).await
}

async fn home() -> Html<String> {
    Html(pages::home())
}

async fn about() -> Html<String> {
    Html(pages::about())
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE_CSS,
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Html(pages::not_found()))
}

/// Shows the login form and sets a new random CSRF cookie.
async fn show_login(uri: Uri) -> Response {
    let csrf_token = random_token();
    let action = login_action(next_target(&uri).as_deref());
    let page = pages::login(&LoginForm {
        action: &action,
        csrf_token: &csrf_token,
        username: "",
        error: None,
    });
    let csrf_cookie = format!("{CSRF_COOKIE}={csrf_token}; Path=/; SameSite=Lax");
    ([(SET_COOKIE, csrf_cookie)], Html(page)).into_response()
}

#[derive(Deserialize)]
struct LoginFields {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf_token: String,
}

/// Checks the CSRF token and the credentials of a login form. On success it creates a
/// session and redirects to `next` or the dashboard.
async fn submit_login(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record_login_post(sha256_hex(&body), body.len(), raw_path(&uri));

    let fields = match parse_login_fields(&headers, body).await {
        Ok(fields) => fields,
        Err(rejection) => return rejection.into_response(),
    };

    let Some(cookie_token) = cookie_value(&headers, CSRF_COOKIE) else {
        return csrf_failure("the csrftoken cookie is missing");
    };
    if !constant_time_eq(fields.csrf_token.as_bytes(), cookie_token.as_bytes()) {
        return csrf_failure(
            "the csrf_token field is missing or does not match the csrftoken cookie",
        );
    }

    let next = next_target(&uri);
    let Some(user) = authenticate(&fields.username, &fields.password) else {
        let action = login_action(next.as_deref());
        let page = pages::login(&LoginForm {
            action: &action,
            csrf_token: &cookie_token,
            username: &fields.username,
            error: Some(INVALID_CREDENTIALS),
        });
        return Html(page).into_response();
    };

    let session_id = state.create_session(user);
    let location = unchecked_next(&uri)
        .or(next)
        .unwrap_or_else(|| DEFAULT_LANDING_PAGE.to_owned());
    // The second cookie deletes `last_login`, so clients and gateways see a
    // Max-Age=0 cookie next to the new session cookie, in this order.
    let cookies = AppendHeaders([
        (SET_COOKIE, session_cookie(&session_id)),
        (
            SET_COOKIE,
            format!("last_login={}; Path=/; Max-Age=0", unix_time()),
        ),
    ]);
    (StatusCode::FOUND, [(LOCATION, location)], cookies).into_response()
}

/// Parses the urlencoded login form with axum's `Form` extractor, which rejects a
/// missing or wrong `Content-Type` with 415. The body was read earlier, because its
/// digest is recorded before parsing.
async fn parse_login_fields(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<LoginFields, FormRejection> {
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = Method::POST;
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        request
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    let Form(fields) = Form::<LoginFields>::from_request(request, &()).await?;
    Ok(fields)
}

fn csrf_failure(reason: &str) -> Response {
    (StatusCode::FORBIDDEN, Html(pages::csrf_failure(reason))).into_response()
}

#[derive(Deserialize)]
struct ApiLoginRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Logs in with JSON credentials. Wrong or missing credentials return 401. A body that
/// axum's `Json` extractor rejects returns the rejection's status, for example 400 for
/// invalid JSON or 415 without `Content-Type: application/json`.
async fn api_login(
    State(state): State<AppState>,
    payload: Result<Json<ApiLoginRequest>, JsonRejection>,
) -> Response {
    let credentials = match payload {
        Ok(Json(credentials)) => credentials,
        Err(rejection) => {
            let body = json!({ "ok": false, "error": rejection.body_text() });
            return (rejection.status(), Json(body)).into_response();
        }
    };

    let Some(user) = authenticate(&credentials.username, &credentials.password) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "ok": false }))).into_response();
    };
    let session_id = state.create_session(user);
    (
        [(SET_COOKIE, session_cookie(&session_id))],
        Json(json!({ "ok": true, "user": user })),
    )
        .into_response()
}

/// Deletes the session, if any, and redirects to the login form.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session_id) = cookie_value(&headers, SESSION_COOKIE) {
        state.delete_session(&session_id);
    }
    let delete_cookie = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0");
    (
        StatusCode::FOUND,
        [(LOCATION, "/login".to_owned()), (SET_COOKIE, delete_cookie)],
    )
        .into_response()
}

async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(user) = session_user(&state, &headers) else {
        return redirect_to_login();
    };
    let gateway_user = header_text(&headers, GATEWAY_USER_HEADER);
    Html(pages::dashboard(&user, gateway_user.as_deref())).into_response()
}

async fn profile(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(user) = session_user(&state, &headers) else {
        return redirect_to_login();
    };
    let gateway_user = header_text(&headers, GATEWAY_USER_HEADER);
    Html(pages::profile(&user, gateway_user.as_deref())).into_response()
}

async fn api_me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(user) = session_user(&state, &headers) else {
        let body = json!({ "error": "authentication required" });
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    };
    let gateway_user = header_text(&headers, GATEWAY_USER_HEADER);
    Json(json!({ "user": user, "gateway_user": gateway_user })).into_response()
}

/// Returns the method, raw path with query, body digest and length, and all headers
/// (lowercase names, values in arrival order) of the request.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let mut header_values: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        header_values.entry(name.as_str()).or_default().push(text);
    }
    Json(json!({
        "method": method.as_str(),
        "path": raw_path(&uri),
        "body_sha256": sha256_hex(&body),
        "body_len": body.len(),
        "headers": header_values,
    }))
}

async fn last_login(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.login_record())
}

async fn recent_requests(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.recent_requests())
}

fn session_user(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let session_id = cookie_value(headers, SESSION_COOKIE)?;
    state.session_user(&session_id)
}

fn session_cookie(session_id: &str) -> String {
    format!("{SESSION_COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Lax")
}

fn redirect_to_login() -> Response {
    (StatusCode::FOUND, [(LOCATION, "/login")]).into_response()
}

/// Returns the `next` query parameter when it is a local path. A query that does not
/// parse counts as no `next`.
fn next_target(uri: &Uri) -> Option<String> {
    #[derive(Deserialize)]
    struct NextQuery {
        next: Option<String>,
    }

    let Query(query) = Query::<NextQuery>::try_from_uri(uri).ok()?;
    query.next.filter(|target| is_local_path(target))
}

/// Returns the `next_unchecked` query parameter as it is. Like many legacy
/// applications, the demo app has this open redirect on purpose, so tests
/// can show that the gateway replaces unsafe redirect targets.
fn unchecked_next(uri: &Uri) -> Option<String> {
    #[derive(Deserialize)]
    struct UncheckedQuery {
        next_unchecked: Option<String>,
    }

    let Query(query) = Query::<UncheckedQuery>::try_from_uri(uri).ok()?;
    query.next_unchecked
}

/// Returns the login form's action URL, which keeps `next` for the POST.
fn login_action(next: Option<&str>) -> String {
    match next {
        Some(target) => format!("/login?next={}", percent_encode_query_value(target)),
        None => "/login".to_owned(),
    }
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests;
