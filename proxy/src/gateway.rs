//! The pingora `ProxyHttp` implementation: routing, login interception,
//! the second-factor challenge and session enforcement.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use otpgate_config::{BodyFormat, LoginRoute, Settings};
use otpgate_hsm::Vault;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::cookies;
use crate::pages::Pages;
use crate::store::{RateKey, Store};
use crate::{client_ip, headers, path};

/// Largest body of a gateway form, in bytes.
pub(crate) const MAX_FORM_BYTES: usize = 8 * 1024;

/// Everything the proxy shares between requests.
pub struct Gateway {
    pub settings: Arc<Settings>,
    pub vault: Arc<Vault>,
    /// The Redis store connected at start-up. Its driver task runs on
    /// another runtime, which costs cross-thread wake-ups per command.
    fallback_store: Store,
    /// A second connection, made from the proxy's own runtime so that its
    /// driver task shares the worker threads. It is used as soon as it exists.
    local_store: Arc<tokio::sync::OnceCell<Store>>,
    /// Start of the latest attempt to make `local_store`, in milliseconds
    /// since the Unix epoch; attempts are at least 5 s apart.
    local_store_attempt: std::sync::atomic::AtomicU64,
    /// Recently confirmed session flags (see `flag_cache`).
    pub(crate) flags: crate::flag_cache::FlagCache,
    pub(crate) pages: Pages,
    /// Connections to the application for logins and password re-checks.
    pub(crate) connector: pingora::connectors::http::Connector,
    /// The application's address, resolved once at start-up: pingora 0.9
    /// resolves a host name with blocking DNS on every request otherwise.
    // TODO: re-resolve periodically for applications whose address changes.
    pub(crate) upstream_addr: std::net::SocketAddr,
    /// One permit per HSM session (`hsm.pool_size`): requests wait here for
    /// the vault instead of in blocking threads.
    vault_permits: Arc<tokio::sync::Semaphore>,
    /// `app.identity_header`, parsed and folded once; `None` when unset.
    pub(crate) identity_header: Option<headers::IdentityHeader>,
}


/// An error of a step that may fail in Redis, the HSM or a decoding step;
/// each leads to 503.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    pub(crate) client: Option<IpAddr>,
    pub(crate) tls: bool,
    pub(crate) identity: Option<headers::Identity>,
    pub(crate) rewritten_path: Option<String>,
    /// The HTML response gets the settings link; its body is collected here.
    inject: Option<Vec<u8>>,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Returns `target` if it is a same-origin relative path, otherwise `/`.
pub fn safe_target(target: &str) -> String {
    let ok = target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target.contains(['\\', '\r', '\n', '\t'])
        && path::canonicalize(target.split(['?', '#']).next().unwrap_or("/")).is_ok_and(|p| !p.starts_with("//"));
    if ok {
        target.to_string()
    } else {
        "/".to_string()
    }
}


impl Gateway {
    /// Builds the proxy around an open vault and store; `upstream_addr` is
    /// the resolved `upstream.address`.
    pub fn new(settings: Arc<Settings>, vault: Arc<Vault>, store: Store, upstream_addr: std::net::SocketAddr) -> Gateway {
        let pages = Pages::new(&settings.app.product_name, &settings.gateway.prefix);
        let connector = pingora::connectors::http::Connector::new(None);
        let flags = crate::flag_cache::FlagCache::new(std::time::Duration::from_millis(settings.gateway.session_cache_ms));
        let identity_header = settings
            .app
            .identity_header
            .as_deref()
            .map(|name| headers::IdentityHeader::new(name).expect("app.identity_header is validated as a header name"));
        Gateway {
            vault_permits: Arc::new(tokio::sync::Semaphore::new(settings.hsm.pool_size.max(1))),
            identity_header,
            settings,
            vault,
            fallback_store: store,
            local_store: Arc::new(tokio::sync::OnceCell::new()),
            local_store_attempt: std::sync::atomic::AtomicU64::new(0),
            flags,
            pages,
            connector,
            upstream_addr,
        }
    }

    /// Runs `work` with the vault on a blocking thread, once one of the
    /// `hsm.pool_size` permits is free, so no more threads wait for the HSM
    /// than it has sessions.
    pub(crate) async fn vault_call<T, F>(&self, work: F) -> std::result::Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&Vault) -> std::result::Result<T, BoxError> + Send + 'static,
    {
        let _permit = self.vault_permits.acquire().await.map_err(|_| "the vault queue is closed")?;
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || work(&vault)).await?
    }

    /// Returns the store: the proxy runtime's own connection once it exists.
    pub(crate) fn store(&self) -> &Store {
        self.local_store.get().unwrap_or(&self.fallback_store)
    }

    /// Starts, in the background, a Redis connection on the runtime of the
    /// calling request, unless one exists or an attempt began less than 5 s ago.
    fn connect_local_store(&self) {
        use std::sync::atomic::Ordering;
        if self.local_store.initialized() {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let last = self.local_store_attempt.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 5_000
            || self.local_store_attempt.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let cell = self.local_store.clone();
        let redis = self.settings.redis.clone();
        tokio::spawn(async move {
            let timeout = std::time::Duration::from_millis(redis.timeout_ms);
            if let Err(e) = cell.get_or_try_init(|| Store::connect(&redis.url, &redis.key_prefix, timeout)).await {
                tracing::warn!(error = %e, "connecting Redis from the proxy runtime failed; using the start-up connection");
            }
        });
    }

    /// Returns the upstream peer of every request.
    pub(crate) fn peer(&self) -> HttpPeer {
        let upstream = &self.settings.upstream;
        HttpPeer::new(self.upstream_addr, upstream.tls, upstream.sni.clone())
    }

    pub(crate) fn is_json(session: &Session) -> bool {
        session
            .req_header()
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    }

    pub(crate) fn is_html(session: &Session) -> bool {
        session
            .req_header()
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
    }

    pub(crate) async fn respond(
        &self,
        session: &mut Session,
        status: u16,
        headers: Vec<(&'static str, String)>,
        content_type: &str,
        body: String,
    ) -> Result<bool> {
        let mut response = ResponseHeader::build(status, Some(headers.len() + 3))?;
        for (name, value) in headers {
            response.append_header(name, value)?;
        }
        response.insert_header("content-type", content_type)?;
        response.insert_header("cache-control", "no-store")?;
        response.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(response), false).await?;
        session.write_response_body(Some(Bytes::from(body)), true).await?;
        Ok(true)
    }

    pub(crate) async fn respond_page(&self, session: &mut Session, status: u16, headers: Vec<(&'static str, String)>, body: String) -> Result<bool> {
        self.respond(session, status, headers, "text/html; charset=utf-8", body).await
    }

    pub(crate) async fn unavailable(&self, session: &mut Session, error: &(dyn std::fmt::Display + Sync)) -> Result<bool> {
        tracing::error!(error = %error, "second factor unavailable; responding with 503");
        let body = self.pages.message(
            "Temporarily unavailable",
            "Sign-in is temporarily unavailable. Please try again in a minute.",
            true,
            None,
        );
        self.respond_page(session, 503, vec![("retry-after", "30".into())], body).await
    }

    pub(crate) async fn bad_request(&self, session: &mut Session, reason: &str) -> Result<bool> {
        let body = self.pages.message("Bad request", reason, true, None);
        self.respond_page(session, 400, Vec::new(), body).await
    }

    pub(crate) fn pending_cookie_value(&self, session: &Session) -> Option<String> {
        let header = session.req_header().headers.get("cookie")?.to_str().ok()?;
        let mut values = cookies::values(header, cookies::PENDING_COOKIE_TLS);
        values.extend(cookies::values(header, cookies::PENDING_COOKIE));
        values.into_iter().find(|v| !v.is_empty()).map(str::to_string)
    }

    pub(crate) async fn read_body(&self, session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(body)))
    }

    /// Serves a path under the reserved prefix.
    async fn serve_gateway_page(&self, session: &mut Session, ctx: &mut RequestCtx, rest: &str) -> Result<bool> {
        match (session.req_header().method.as_str(), rest) {
            ("GET", "challenge") => self.challenge_page(session, ctx, None).await,
            ("POST", "challenge") => self.challenge_submit(session, ctx, false).await,
            ("GET", "challenge/backup") => self.backup_challenge_page(session, ctx, None).await,
            ("POST", "challenge/backup") => self.challenge_submit(session, ctx, true).await,
            ("GET", "settings") => self.settings_page(session, ctx, None).await,
            ("POST", "enroll/start") => self.enroll_start(session, ctx).await,
            ("GET", "enroll") => self.enroll_required_page(session, ctx).await,
            ("GET", "enroll/qr.png") => self.enroll_qr(session, ctx).await,
            ("POST", "enroll/verify") => self.enroll_verify(session, ctx).await,
            ("POST", "backup/regenerate") => self.regenerate_backup(session, ctx).await,
            ("POST", "disable") => self.disable(session, ctx).await,
            _ => {
                let body = self.pages.message("Not found", "There is no page at this address.", true, None);
                self.respond_page(session, 404, Vec::new(), body).await
            }
        }
    }

}


pub(crate) fn username_from(route: &LoginRoute, body: &[u8]) -> Option<String> {
    match route.body {
        BodyFormat::Form => form_urlencoded::parse(body)
            .find(|(key, _)| key == route.username_field.as_str())
            .map(|(_, value)| value.into_owned()),
        BodyFormat::Json => serde_json::from_slice::<serde_json::Value>(body)
            .ok()?
            .get(&route.username_field)?
            .as_str()
            .map(str::to_string),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.connect_local_store();
        ctx.tls = session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some();
        let peer = session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        // X-Forwarded-For matters only when the peer may be a trusted proxy.
        ctx.client = Some(if self.settings.gateway.trusted_proxies.is_empty() {
            peer
        } else {
            let forwarded: Vec<String> = session
                .req_header()
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let forwarded: Vec<&str> = forwarded.iter().map(String::as_str).collect();
            client_ip::client_ip(peer, &forwarded, &self.settings.gateway.trusted_proxies)
        });

        // The upstream request is a copy of this header, so it carries no
        // client copy of the identity header either.
        if let Some(header) = &self.identity_header {
            header.strip(session.req_header_mut());
        }

        // Cheap clones (shared bytes), so the path and cookies can be read
        // while the session is borrowed mutably below.
        let uri = session.req_header().uri.clone();
        let raw_path = uri.path();
        let canonical = match path::canonicalize(raw_path) {
            Ok(canonical) => canonical,
            Err(e) => return self.bad_request(session, &format!("Invalid request path: {e}.")).await,
        };
        if canonical != raw_path {
            ctx.rewritten_path = Some(canonical.to_string());
        }

        let prefix = self.settings.gateway.prefix.as_str();
        if let Some(rest) = canonical.strip_prefix(prefix) {
            return self.serve_gateway_page(session, ctx, rest).await;
        }
        if path::same_route(&canonical, prefix.trim_end_matches('/')) {
            return self.serve_gateway_page(session, ctx, "").await;
        }

        let cookie_header = session.req_header().headers.get(http::header::COOKIE).cloned();
        let method = session.req_header().method.clone();
        let method = method.as_str();

        // Login interception: read the whole body first, so an oversized
        // login never reaches the application at all.
        if let Some(route) = self
            .settings
            .app
            .login_routes
            .iter()
            .find(|route| route.method == method && path::same_route(&canonical, &route.path))
        {
            let limit = self.settings.app.max_login_body_bytes;
            let declared = session
                .req_header()
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let too_large = self.pages.message("Request too large", "The login request is larger than the gateway accepts.", true, None);
            if declared.is_some_and(|len| len > limit) {
                return self.respond_page(session, 413, vec![("connection", "close".into())], too_large).await;
            }
            let Some(body) = self.read_body(session, limit).await? else {
                return self.respond_page(session, 413, vec![("connection", "close".into())], too_large).await;
            };
            let user = self.settings.app.member_name(&username_from(route, &body).unwrap_or_default());
            let address = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();
            let limits = &self.settings.rate_limit;
            let counted = self
                .store()
                .count_pair(
                    (&RateKey::PasswordUser(&user), limits.password_per_user.window_secs),
                    (&RateKey::PasswordAddress(&address), limits.password_per_address.window_secs),
                )
                .await;
            let (per_user, per_address) = match counted {
                Ok(counts) => counts,
                Err(e) => return self.unavailable(session, &e).await,
            };
            if per_user > u64::from(limits.password_per_user.limit) || per_address > u64::from(limits.password_per_address.limit) {
                crate::metrics::outcome("password_rate_limited");
                tracing::warn!(user = %user, address = %address, outcome = "password_rate_limited", "login rejected: too many password attempts");
                let minutes = limits.password_per_user.window_secs.max(limits.password_per_address.window_secs).div_ceil(60);
                let message = format!("Too many sign-in attempts. Wait {minutes} minute{} and try again.", if minutes == 1 { "" } else { "s" });
                let body = self.pages.message("Too many attempts", &message, true, None);
                return self.respond_page(session, 429, Vec::new(), body).await;
            }
            let route = route.clone();
            return self.proxy_login(session, ctx, &route, &user, body).await;
        }

        let cookie_header = cookie_header.as_ref().and_then(|v| v.to_str().ok());
        self.enforce_session(session, ctx, &canonical, method, cookie_header).await
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer()))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, request: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        if let (Some(header), Some(identity)) = (&self.identity_header, &ctx.identity) {
            header.set(request, identity)?;
        }
        if let Some(canonical) = &ctx.rewritten_path {
            let query = request.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let uri: http::Uri = format!("{canonical}{query}").parse().map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
            request.set_uri(uri);
        }
        // Gateway cookies stay at the gateway. The header is rewritten only
        // when it carries one.
        let carries_gateway_cookie = request
            .headers
            .get(http::header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("otpgate_"));
        if !carries_gateway_cookie {
            return Ok(());
        }
        if let Some(header) = request.headers.get(http::header::COOKIE).and_then(|v| v.to_str().ok()).map(str::to_string) {
            let kept = cookies::without(&header, cookies::is_gateway_cookie);
            request.remove_header("cookie");
            if let Some(kept) = kept {
                request.insert_header("cookie", kept)?;
            }
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, response: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        if self.settings.app.inject_settings_link && ctx.identity.is_some() && crate::inject::applies(response) {
            response.remove_header("content-length");
            response.remove_header("etag");
            ctx.inject = Some(Vec::new());
        }
        Ok(())
    }

    fn response_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<Option<std::time::Duration>> {
        if let Some(collected) = ctx.inject.as_mut() {
            if let Some(chunk) = body.take() {
                collected.extend_from_slice(&chunk);
            }
            if end_of_stream {
                let link = format!("{}settings", self.settings.gateway.prefix);
                *body = Some(Bytes::from(crate::inject::insert_link(std::mem::take(collected), &link)));
                ctx.inject = None;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_targets_become_root() {
        for target in ["//evil.example/", "/\\evil.example", "https://evil.example/", "/%2F%2Fevil.example", "", "javascript:alert(1)"] {
            assert_eq!(safe_target(target), "/", "{target}");
        }
        assert_eq!(safe_target("/dashboard?tab=2"), "/dashboard?tab=2");
    }

}
