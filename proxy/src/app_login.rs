//! Password re-checks against the application's own login endpoint.

use bytes::Bytes;
use otpgate_config::{BodyFormat, LoginRoute, Settings};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;

use crate::cookies;

/// A password check that got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum AppLoginError {
    #[error("the application's login endpoint {path} failed: {source}")]
    Upstream {
        path: String,
        #[source]
        source: Box<pingora::Error>,
    },
}

/// Returns the route used for re-checks: the first JSON route, because it
/// needs no CSRF token from a login page, else the first route.
fn check_route(settings: &Settings) -> &LoginRoute {
    settings
        .app
        .login_routes
        .iter()
        .find(|route| route.body == BodyFormat::Json)
        .unwrap_or(&settings.app.login_routes[0])
}

/// Sends `user` and `password` to the application's login endpoint and
/// applies the success rule. Returns true when the application accepted
/// them. The session the application opens for the check is logged out
/// again at once.
// NOTE: a form route protected by a CSRF token rejects these requests;
// configure a JSON login route for applications with such forms.
pub async fn password_accepted(connector: &Connector, peer: &HttpPeer, settings: &Settings, user: &str, password: &str) -> Result<bool, AppLoginError> {
    let route = check_route(settings);
    let (body, content_type) = match route.body {
        BodyFormat::Json => (
            serde_json::json!({ route.username_field.as_str(): user, route.password_field.as_str(): password }).to_string(),
            "application/json",
        ),
        BodyFormat::Form => (
            form_urlencoded::Serializer::new(String::new())
                .append_pair(&route.username_field, user)
                .append_pair(&route.password_field, password)
                .finish(),
            "application/x-www-form-urlencoded",
        ),
    };
    let upstream_error = |source| AppLoginError::Upstream { path: route.path.clone(), source };

    let mut request = RequestHeader::build(route.method.as_str(), route.path.as_bytes(), None).map_err(upstream_error)?;
    request.insert_header("host", settings.upstream.address.as_str()).map_err(upstream_error)?;
    request.insert_header("content-type", content_type).map_err(upstream_error)?;
    request.insert_header("content-length", body.len().to_string()).map_err(upstream_error)?;
    request.insert_header("connection", "close").map_err(upstream_error)?;

    let (mut http, _reused) = connector.get_http_session(peer).await.map_err(upstream_error)?;
    http.write_request_header(Box::new(request)).await.map_err(upstream_error)?;
    http.write_request_body(Bytes::from(body), true).await.map_err(upstream_error)?;
    http.finish_request_body().await.map_err(upstream_error)?;
    http.read_response_header().await.map_err(upstream_error)?;
    let response = http.response_header().expect("a response header was read").clone();
    while http.read_response_body().await.map_err(upstream_error)?.is_some() {}

    let session_cookie = response
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(cookies::parse_set_cookie)
        .find(|c| c.name == settings.app.session_cookie && !c.deletes);
    let accepted = route.success_status.contains(&response.status.as_u16()) && session_cookie.is_some();
    if let Some(cookie) = session_cookie {
        logout(connector, settings, peer, &cookie.value).await;
    }
    Ok(accepted)
}

/// Ends the application session a password check opened. Failures are
/// logged only: the session expires with the application's lifetime.
async fn logout(connector: &Connector, settings: &Settings, peer: &HttpPeer, session_value: &str) {
    let result = async {
        let mut request = RequestHeader::build("GET", settings.app.logout_path.as_bytes(), None)?;
        request.insert_header("host", settings.upstream.address.as_str())?;
        request.insert_header("cookie", format!("{}={session_value}", settings.app.session_cookie))?;
        request.insert_header("connection", "close")?;
        let (mut http, _) = connector.get_http_session(peer).await?;
        http.write_request_header(Box::new(request)).await?;
        http.finish_request_body().await?;
        http.read_response_header().await?;
        while http.read_response_body().await?.is_some() {}
        Ok::<_, Box<pingora::Error>>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "logging out the password-check session failed");
    }
}
