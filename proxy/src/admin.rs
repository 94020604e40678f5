//! The admin listener: health, readiness, metrics, and a small admin API
//! behind a bearer token.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use otpgate_config::Secret;
use otpgate_hsm::{UserId, Vault};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::record::EnrollmentRecord;
use crate::store::Store;

/// The admin HTTP application.
pub struct Admin {
    pub store: Store,
    pub vault: Arc<Vault>,
    /// Bearer token of `/api/`; without one the API responds 404.
    pub token: Option<Secret>,
    /// Application settings, for the member-name rule.
    pub app: otpgate_config::AppSettings,
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len().to_string())
        .header("cache-control", "no-store")
        .body(body.into_bytes())
        .expect("static response parts are valid")
}

fn json(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string())
}

impl Admin {
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        presented.len() == token.expose().len() && bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
    }

    async fn ready(&self) -> Response<Vec<u8>> {
        let redis = self.store.ping().await;
        let vault = self.vault.clone();
        let hsm = tokio::task::spawn_blocking(move || vault.status()).await;
        let hsm_ok = matches!(&hsm, Ok(Ok(status)) if status.is_ready());
        let body = serde_json::json!({
            "redis": if redis.is_ok() { "ok" } else { "unreachable" },
            "hsm": if hsm_ok { "ok" } else { "not ready" },
        });
        if let Err(e) = &redis {
            tracing::warn!(error = %e, "readiness: Redis check failed");
        }
        if !hsm_ok {
            tracing::warn!("readiness: HSM check failed");
        }
        json(if redis.is_ok() && hsm_ok { 200 } else { 503 }, body)
    }

    async fn user_status(&self, user: &str) -> Response<Vec<u8>> {
        match self.store.record(user).await {
            Ok(None) => json(200, serde_json::json!({ "user": user, "enrolled": false })),
            Ok(Some(bytes)) => {
                let vault = self.vault.clone();
                let owned = user.to_string();
                match tokio::task::spawn_blocking(move || EnrollmentRecord::open(&owned, &bytes, &vault)).await {
                    Ok(Ok(record)) => json(
                        200,
                        serde_json::json!({
                            "user": user, "enrolled": true, "algorithm": record.algorithm,
                            "digits": record.digits, "period": record.period, "created": record.created,
                        }),
                    ),
                    _ => json(500, serde_json::json!({ "user": user, "error": "enrollment record failed its integrity check" })),
                }
            }
            Err(e) => json(503, serde_json::json!({ "error": e.to_string() })),
        }
    }

    async fn user_reset(&self, user: &str) -> Response<Vec<u8>> {
        let existed = match self.store.delete_record(user).await {
            Ok(existed) => existed,
            Err(e) => return json(503, serde_json::json!({ "error": e.to_string() })),
        };
        let vault = self.vault.clone();
        let id = UserId(user.to_string());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || vault.delete_token_seed(&id)).await {
            tracing::warn!(user = %user, error = %e, "removing the token-mode seed object failed");
        }
        tracing::info!(target: "audit", user = %user, action = "reset", existed, via = "admin_api", "second factor reset by operator");
        json(200, serde_json::json!({ "user": user, "reset": existed }))
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => reply(200, "text/plain", "ok\n".into()),
            ("GET", "/readyz") => self.ready().await,
            ("GET", "/metrics") => reply(200, "text/plain; version=0.0.4", crate::metrics::render()),
            (_, api) if api.starts_with("/api/") => {
                if self.token.is_none() {
                    return json(404, serde_json::json!({ "error": "the admin API is off; set admin.token_env or admin.token_file" }));
                }
                if !self.authorized(session) {
                    return json(401, serde_json::json!({ "error": "missing or wrong bearer token" }));
                }
                let Some(user) = api.strip_prefix("/api/users/").filter(|u| !u.is_empty() && !u.contains('/')) else {
                    return json(404, serde_json::json!({ "error": "unknown admin API path" }));
                };
                let user = self.app.member_name(&percent_encoding::percent_decode_str(user).decode_utf8_lossy());
                match method.as_str() {
                    "GET" => self.user_status(&user).await,
                    "DELETE" => self.user_reset(&user).await,
                    _ => json(405, serde_json::json!({ "error": "use GET or DELETE" })),
                }
            }
            _ => json(404, serde_json::json!({ "error": "not found" })),
        }
    }
}
