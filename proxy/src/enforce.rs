//! Session enforcement: a request that carries the application's session
//! cookie reaches the application only if Redis has a flag for it.

use std::sync::Arc;

use pingora::prelude::*;

use crate::challenge::SessionFlag;
use crate::headers::Identity;
use crate::gateway::{Gateway, RequestCtx};
use crate::{cookies, path};

impl Gateway {
    /// Lets the request through (`Ok(false)`) when it carries no session
    /// cookie or a flagged one, and sets `ctx.identity` for a flagged one.
    /// Otherwise it responds itself: 303 to the login page for an HTML GET,
    /// 401 for anything else, and 303 to the challenge while a login is
    /// pending. On a public path an unflagged cookie is removed instead.
    pub(crate) async fn enforce_session(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        canonical: &str,
        method: &str,
        cookie_header: Option<&str>,
    ) -> Result<bool> {
        let prefix = &self.settings.gateway.prefix;
        let session_cookie = self.settings.app.session_cookie.as_str();
        let session_values = || cookies::values_iter(cookie_header.unwrap_or_default(), session_cookie);
        let public = path::is_public(canonical, &self.settings.app.public_paths);
        if session_values().next().is_none() {
            if !public && self.pending_cookie_value(session).is_some() && method == "GET" {
                let challenge = format!("{prefix}challenge");
                return self.respond(session, 303, vec![("location", challenge)], "text/plain; charset=utf-8", String::new()).await;
            }
            return Ok(false);
        }
        let mut identity: Option<Identity> = None;
        for value in session_values() {
            if let Some(user) = self.flags.get(value) {
                if identity.as_ref().is_none_or(|u| u.member == user.member) {
                    identity = Some(user);
                    continue;
                }
                identity = None;
                break;
            }
            match self.store().session_flag(value).await {
                Ok(Some(bytes)) => {
                    let flag: Option<SessionFlag> = serde_json::from_slice(&bytes).ok();
                    match flag {
                        Some(flag) if identity.as_ref().is_none_or(|u| *u.member == *flag.user) => {
                            let user = Identity::new(Arc::from(flag.user));
                            self.flags.put(value, user.clone());
                            identity = Some(user);
                        }
                        _ => {
                            identity = None;
                            break;
                        }
                    }
                }
                Ok(None) => {
                    identity = None;
                    break;
                }
                Err(e) => return self.unavailable(session, &e).await,
            }
        }
        match identity {
            Some(user) => {
                if path::same_route(canonical, &self.settings.app.logout_path) {
                    for value in session_values() {
                        self.flags.remove(value);
                        if let Err(e) = self.store().delete_session_flag(value).await {
                            return self.unavailable(session, &e).await;
                        }
                    }
                    crate::metrics::outcome("logout");
                    tracing::info!(user = %user.member, outcome = "logout", "session flag removed");
                }
                ctx.identity = Some(user);
                Ok(false)
            }
            None if public => {
                // Forward without the unverified session cookie.
                let stripped = cookie_header.and_then(|h| cookies::without(h, |name| name == session_cookie));
                let request = session.req_header_mut();
                request.remove_header("cookie");
                if let Some(stripped) = stripped {
                    request.insert_header("cookie", stripped)?;
                }
                Ok(false)
            }
            None => {
                crate::metrics::outcome("unverified_session");
                tracing::info!(address = %ctx.client.map(|ip| ip.to_string()).unwrap_or_default(), outcome = "unverified_session", "request with an unverified session cookie stopped");
                let clear = ("set-cookie", cookies::clear_cookie(session_cookie));
                if method == "GET" && Self::is_html(session) {
                    let login = self.settings.app.login_page.clone();
                    self.respond(session, 303, vec![("location", login), clear], "text/plain; charset=utf-8", String::new()).await
                } else {
                    let body = serde_json::json!({ "error": "session not verified" }).to_string();
                    self.respond(session, 401, vec![clear], "application/json", body).await
                }
            }
        }
    }
}
