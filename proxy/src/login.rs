//! Login interception: the login request goes to the application through
//! the gateway's own upstream connection, so the gateway has the whole
//! response before the browser gets any of it.

use std::time::Duration;

use bytes::Bytes;
use otpgate_config::{BodyFormat, LoginRoute, Policy};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::cookies::{self, SetCookie};
use crate::gateway::{safe_target, Gateway, RequestCtx};

/// Largest login response from the application that is read, in bytes.
/// Login responses are redirects or small pages; a larger one gets 502.
const MAX_LOGIN_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long an idle upstream connection is kept for the next login.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Headers that apply to one connection only and are never forwarded
/// (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The response the browser gets for a login.
struct Answer {
    header: ResponseHeader,
    body: Bytes,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: String) -> Result<Answer> {
        let mut header = ResponseHeader::build(status, Some(4))?;
        header.insert_header("content-type", content_type)?;
        header.insert_header("cache-control", "no-store")?;
        Ok(Answer { header, body: Bytes::from(body) })
    }
}

impl Gateway {
    /// Forwards a login request whose body was read in full, judges the
    /// application's response by the success rule and sends the browser that
    /// response, the challenge or an error page. Always responds itself.
    pub(crate) async fn proxy_login(&self, session: &mut Session, ctx: &mut RequestCtx, route: &LoginRoute, user: &str, body: Bytes) -> Result<bool> {
        let request = self.upstream_login_request(session, ctx, body.len())?;
        let (response, response_body) = match self.send_login(request, body).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, path = %route.path, "the application's login endpoint failed");
                let page = self.pages.message("Bad gateway", "The application did not answer the sign-in. Please try again.", true, None);
                return self.respond_page(session, 502, Vec::new(), page).await;
            }
        };
        let answer = match self.judge_login(ctx, route, user, response, response_body).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "login could not be completed; responding with 503");
                let page = self.pages.message("Temporarily unavailable", "Sign-in is temporarily unavailable. Please try again in a minute.", true, None);
                Answer::new(503, "text/html; charset=utf-8", page)?
            }
        };
        let mut header = answer.header;
        header.insert_header("content-length", answer.body.len().to_string())?;
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(answer.body), true).await?;
        Ok(true)
    }

    /// Builds the request the application gets: the browser's request with
    /// the canonical path, without hop-by-hop headers, gateway cookies or
    /// identity headers, and with the exact body length.
    fn upstream_login_request(&self, session: &Session, ctx: &RequestCtx, body_len: usize) -> Result<RequestHeader> {
        let mut request = session.req_header().clone();
        for name in HOP_BY_HOP.iter().chain(&["transfer-encoding", "content-length"]) {
            request.remove_header(*name);
        }
        if let Some(header) = &self.identity_header {
            header.strip(&mut request);
        }
        if let Some(header) = request.headers.get("cookie").and_then(|v| v.to_str().ok()).map(str::to_string) {
            request.remove_header("cookie");
            if let Some(kept) = cookies::without(&header, cookies::is_gateway_cookie) {
                request.insert_header("cookie", kept)?;
            }
        }
        if let Some(canonical) = &ctx.rewritten_path {
            let query = request.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let uri: http::Uri = format!("{canonical}{query}").parse().map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
            request.set_uri(uri);
        }
        request.insert_header("content-length", body_len.to_string())?;
        Ok(request)
    }

    /// Sends the login request and reads the whole response.
    async fn send_login(&self, request: RequestHeader, body: Bytes) -> Result<(ResponseHeader, Bytes)> {
        let peer = self.peer();
        let (mut http, _reused) = self.connector.get_http_session(&peer).await?;
        http.write_request_header(Box::new(request)).await?;
        http.write_request_body(body, true).await?;
        http.finish_request_body().await?;
        http.read_response_header().await?;
        let response = http
            .response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?
            .clone();
        let mut collected = Vec::new();
        while let Some(chunk) = http.read_response_body().await? {
            if collected.len() + chunk.len() > MAX_LOGIN_RESPONSE_BYTES {
                return Err(Error::explain(ErrorType::InvalidHTTPHeader, "the login response is larger than 1 MiB"));
            }
            collected.extend_from_slice(&chunk);
        }
        self.connector.release_http_session(http, &peer, Some(UPSTREAM_IDLE)).await;
        Ok((response, Bytes::from(collected)))
    }

    /// Applies the success rule and the member's 2FA state to the
    /// application's response.
    async fn judge_login(
        &self,
        ctx: &RequestCtx,
        route: &LoginRoute,
        user: &str,
        mut response: ResponseHeader,
        body: Bytes,
    ) -> std::result::Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
        for name in HOP_BY_HOP.iter().chain(&["transfer-encoding", "content-length"]) {
            response.remove_header(*name);
        }
        let address = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();
        let set_cookies: Vec<String> = response
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let session_set = set_cookies
            .iter()
            .filter_map(|h| cookies::parse_set_cookie(h))
            .any(|c: SetCookie| c.name == self.settings.app.session_cookie && !c.deletes);
        let accepted = route.success_status.contains(&response.status.as_u16()) && session_set;
        if !accepted {
            crate::metrics::outcome("password_rejected");
            tracing::info!(user = %user, address = %address, outcome = "password_rejected", "login rejected by the application");
            return Ok(Answer { header: response, body });
        }

        let record = self.store().record(user).await?;
        let enroll = record.is_none() && self.settings.app.policy == Policy::Required;
        if record.is_none() && !enroll {
            self.flag_sessions(&set_cookies, user, "no2fa").await?;
            crate::metrics::outcome("no_second_factor");
            tracing::info!(user = %user, address = %address, outcome = "no_second_factor", "login passed through: member has no 2FA");
            return Ok(Answer { header: response, body });
        }

        let target = response
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(safe_target)
            .unwrap_or_else(|| "/".to_string());
        let ticket = self.hold_login(user, set_cookies, target, enroll).await?;
        let outcome = if enroll { "enrollment_required" } else { "second_factor_required" };
        crate::metrics::outcome(outcome);
        tracing::info!(user = %user, address = %address, outcome, "password accepted; session held until the second factor");

        let page = if enroll { "enroll" } else { "challenge" };
        let challenge = format!("{}{page}", self.settings.gateway.prefix);
        let pending = cookies::pending_cookie(&ticket, ctx.tls, self.settings.gateway.pending_login_ttl_secs);
        let mut answer = if route.body == BodyFormat::Json {
            let body = serde_json::json!({ "second_factor_required": true, "challenge": challenge }).to_string();
            Answer::new(401, "application/json", body)?
        } else {
            let mut answer = Answer::new(303, "text/plain; charset=utf-8", String::new())?;
            answer.header.insert_header("location", challenge.as_str())?;
            answer
        };
        answer.header.append_header("set-cookie", pending)?;
        Ok(answer)
    }
}
