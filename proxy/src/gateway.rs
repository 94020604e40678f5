//! The pingora `ProxyHttp` implementation: routing, login interception,
//! the second-factor challenge and session enforcement.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use otpgate_config::{BodyFormat, LoginRoute, Settings};
use otpgate_hsm::{TimeStep, Vault};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cookies;
use crate::pages::{Pages, BACKUP_REJECTED, CODE_REJECTED};
use crate::record::EnrollmentRecord;
use crate::store::{RateKey, Store, StoreError};
use crate::{client_ip, headers, path};

/// Largest body of a gateway form (the challenge), in bytes.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// Everything the proxy shares between requests.
pub struct Gateway {
    pub settings: Arc<Settings>,
    pub vault: Arc<Vault>,
    pub store: Store,
    pub(crate) pages: Pages,
    /// Connections to the application for logins and password re-checks.
    pub(crate) connector: pingora::connectors::http::Connector,
    /// The application's address, resolved once at start-up: pingora 0.9
    /// resolves a host name with blocking DNS on every request otherwise.
    // TODO: re-resolve periodically for applications whose address changes.
    pub(crate) upstream_addr: std::net::SocketAddr,
}

/// A pending login: the application accepted the password, the member has
/// not given the second factor yet.
#[derive(Serialize, Deserialize)]
pub(crate) struct PendingLogin {
    pub(crate) user: String,
    /// Where the application meant to send the member, already checked.
    pub(crate) target: String,
    /// Held `Set-Cookie` headers, JSON, encrypted with the HSM blob key.
    pub(crate) sealed_cookies: String,
    /// The member has no second factor and policy requires one: the
    /// login finishes through enrollment.
    #[serde(default)]
    pub(crate) enroll: bool,
}

/// The flag stored for an application session that passed the gateway.
#[derive(Serialize, Deserialize)]
pub(crate) struct SessionFlag {
    pub(crate) user: String,
    /// `verified` after a second factor, `no2fa` for a member without one.
    pub(crate) state: String,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    pub(crate) client: Option<IpAddr>,
    pub(crate) tls: bool,
    pub(crate) identity: Option<String>,
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

pub(crate) fn csrf_for(ticket: &str) -> String {
    crate::store::digest_hex(format!("otpgate-csrf\0{ticket}").as_bytes())[..32].to_string()
}

impl Gateway {
    /// Builds the proxy around an open vault and store; `upstream_addr` is
    /// the resolved `upstream.address`.
    pub fn new(settings: Arc<Settings>, vault: Arc<Vault>, store: Store, upstream_addr: std::net::SocketAddr) -> Gateway {
        let pages = Pages::new(&settings.app.product_name, &settings.gateway.prefix);
        let connector = pingora::connectors::http::Connector::new(None);
        Gateway { settings, vault, store, pages, connector, upstream_addr }
    }

    /// The upstream peer of every request.
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
        tracing::error!(error = %error, "second factor unavailable; answering 503");
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

    pub(crate) async fn challenge_page(&self, session: &mut Session, ctx: &RequestCtx, error: Option<&str>) -> Result<bool> {
        let Some(ticket) = self.pending_cookie_value(session) else {
            return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await;
        };
        match self.store.pending(&ticket).await {
            Ok(Some(bytes)) => {
                if serde_json::from_slice::<PendingLogin>(&bytes).is_ok_and(|p| p.enroll) {
                    let enroll = format!("{}enroll", self.settings.gateway.prefix);
                    return self.respond(session, 303, vec![("location", enroll)], "text/plain; charset=utf-8", String::new()).await;
                }
            }
            Ok(None) => return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await,
            Err(e) => return self.unavailable(session, &e).await,
        }
        let status = if error.is_some() { 401 } else { 200 };
        let body = self.pages.challenge(&csrf_for(&ticket), error);
        self.respond_page(session, status, Vec::new(), body).await
    }

    pub(crate) async fn login_again(&self, session: &mut Session, ctx: &RequestCtx, message: &str) -> Result<bool> {
        let login = self.settings.app.login_page.clone();
        let body = self.pages.message("Sign in again", message, true, Some((&login, "Sign in")));
        self.respond_page(session, 401, vec![("set-cookie", cookies::clear_pending_cookie(ctx.tls))], body).await
    }

    /// Checks a TOTP code (`backup` false) or a backup code for the pending
    /// login and finishes it on success.
    pub(crate) async fn challenge_submit(&self, session: &mut Session, ctx: &mut RequestCtx, backup: bool) -> Result<bool> {
        let Some(ticket) = self.pending_cookie_value(session) else {
            return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await;
        };
        let json = Self::is_json(session);
        let Some(body) = self.read_body(session, MAX_FORM_BYTES).await? else {
            return self.respond_page(session, 413, Vec::new(), self.pages.message("Request too large", "The form is too large.", true, None)).await;
        };
        // A JSON body needs no CSRF token: browsers send cross-site JSON only
        // after a CORS preflight, which the gateway never approves, and the
        // pending cookie is SameSite=Lax.
        let form: Vec<(String, String)> = if json {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
                .collect()
        } else {
            form_urlencoded::parse(&body).into_owned().collect()
        };
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let csrf_ok = json
            || field("csrf_token").is_some_and(|token| {
                subtle::ConstantTimeEq::ct_eq(token.as_bytes(), csrf_for(&ticket).as_bytes()).into()
            });
        if !csrf_ok {
            return self.bad_request(session, "The form expired. Go back, reload the page and try again.").await;
        }
        let code = if backup { field("backup_code").unwrap_or("").to_string() } else { normalize_code(field("code").unwrap_or("")) };

        let pending: PendingLogin = match self.store.pending(&ticket).await {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(pending) => pending,
                Err(_) => return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await,
            },
            Ok(None) => return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let user = pending.user.clone();
        let address = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();

        // Count the attempt before any HSM call, so a burst of guesses is
        // cut off by the counter rather than checked.
        let limits = &self.settings.rate_limit;
        let counts = async {
            let per_user = self.store.count(&RateKey::SecondFactorUser(&user), limits.second_factor_per_user.window_secs).await?;
            let per_address = self.store.count(&RateKey::SecondFactorAddress(&address), limits.second_factor_per_address.window_secs).await?;
            Ok::<_, StoreError>((per_user, per_address))
        };
        let (per_user, per_address) = match counts.await {
            Ok(counts) => counts,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let user_over = per_user > u64::from(limits.second_factor_per_user.limit);
        let address_over = per_address > u64::from(limits.second_factor_per_address.limit);
        if user_over || address_over {
            if let Err(e) = self.store.take_pending(&ticket).await {
                return self.unavailable(session, &e).await;
            }
            let wait = self.lockout_wait(user_over.then_some(user.as_str()), address_over.then_some(address.as_str())).await;
            crate::metrics::outcome("locked_out");
            tracing::warn!(user = %user, address = %address, outcome = "locked_out", "second factor rejected: too many attempts");
            let minutes = wait.div_ceil(60).max(1);
            let message = format!("Too many attempts. Wait {minutes} minute{} before signing in again.", if minutes == 1 { "" } else { "s" });
            let login = self.settings.app.login_page.clone();
            let body = self.pages.message("Too many attempts", &message, true, Some((&login, "Sign in")));
            return self.respond_page(session, 429, vec![("set-cookie", cookies::clear_pending_cookie(ctx.tls)), ("retry-after", wait.to_string())], body).await;
        }

        let verified = if backup { self.verify_backup(&user, &code).await } else { self.verify_totp(&user, &code).await };
        let verified = match verified {
            Ok(verified) => verified,
            Err(e) => return self.unavailable(session, &e).await,
        };
        if !verified {
            let message = if backup { BACKUP_REJECTED } else { CODE_REJECTED };
            crate::metrics::outcome(if backup { "backup_code_rejected" } else { "code_rejected" });
            tracing::info!(user = %user, address = %address, outcome = if backup { "backup_code_rejected" } else { "code_rejected" }, "second factor rejected");
            if json {
                let body = serde_json::json!({ "ok": false, "error": message }).to_string();
                return self.respond(session, 401, Vec::new(), "application/json", body).await;
            }
            if backup {
                return self.backup_challenge_page(session, ctx, Some(message)).await;
            }
            return self.challenge_page(session, ctx, Some(message)).await;
        }
        self.finish_login(session, ctx, &ticket, &address).await
    }

    /// Returns the seconds until the exceeded counters expire.
    async fn lockout_wait(&self, user: Option<&str>, address: Option<&str>) -> u64 {
        let mut wait = 1;
        if let Some(user) = user {
            wait = wait.max(self.store.peek_count(&RateKey::SecondFactorUser(user)).await.map(|(_, ttl)| ttl).unwrap_or(0));
        }
        if let Some(address) = address {
            wait = wait.max(self.store.peek_count(&RateKey::SecondFactorAddress(address)).await.map(|(_, ttl)| ttl).unwrap_or(0));
        }
        wait as u64
    }

    /// Checks a TOTP code for `user` and marks its step used. A malformed
    /// code costs no HSM call and no Redis write.
    pub(crate) async fn verify_totp(&self, user: &str, code: &str) -> std::result::Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        // Codes are 6 or 8 digits; anything else is rejected before the
        // record (whose MAC check is an HSM call) is even read.
        if !otpgate_hsm::is_well_formed(code, 6) && !otpgate_hsm::is_well_formed(code, 8) {
            return Ok(false);
        }
        let Some(bytes) = self.store.record(user).await? else {
            return Ok(false);
        };
        crate::metrics::HSM_OPERATIONS.with_label_values(&["totp_verify"]).inc();
        let used = self.store.used_step(user).await?;
        let vault = self.vault.clone();
        let window = self.settings.totp.window;
        let (user_owned, code_owned) = (user.to_string(), code.to_string());
        let step: Option<TimeStep> = tokio::task::spawn_blocking(move || -> std::result::Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let record = EnrollmentRecord::open(&user_owned, &bytes, &vault)?;
            let params = record.params()?;
            if !otpgate_hsm::is_well_formed(&code_owned, params.digits) {
                return Ok(None);
            }
            Ok(vault.verify(&record.sealed()?, &params, &code_owned, now_unix(), window, used.map(TimeStep))?)
        })
        .await??;
        match step {
            Some(step) => Ok(self.store.consume_step(user, step.0).await?),
            None => Ok(false),
        }
    }

    /// Checks a backup code for `user` and marks it used. A code of the
    /// wrong shape costs no hashing.
    pub(crate) async fn verify_backup(&self, user: &str, typed: &str) -> std::result::Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let Some(code) = crate::backup::normalize(typed) else {
            return Ok(false);
        };
        let Some(bytes) = self.store.record(user).await? else {
            return Ok(false);
        };
        let vault = self.vault.clone();
        let user_owned = user.to_string();
        let entry = tokio::task::spawn_blocking(move || -> std::result::Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let record = EnrollmentRecord::open(&user_owned, &bytes, &vault)?;
            Ok(crate::backup::find_match(&code, &record.backup_codes).cloned())
        })
        .await??;
        match entry {
            Some(entry) => Ok(self.store.consume_backup(user, &entry).await?),
            None => Ok(false),
        }
    }

    /// Takes the pending login of `ticket`, decrypts its held cookies and
    /// flags the application session as verified. Returns `None` when the
    /// pending login is gone (finished by a concurrent request, or expired).
    pub(crate) async fn release_login(&self, ticket: &str) -> std::result::Result<Option<(PendingLogin, Vec<String>)>, Box<dyn std::error::Error + Send + Sync>> {
        let Some(bytes) = self.store.take_pending(ticket).await? else {
            return Ok(None);
        };
        let pending: PendingLogin = serde_json::from_slice(&bytes)?;
        let held = self.open_cookies(ticket, &pending.sealed_cookies).await?;
        self.flag_sessions(&held, &pending.user, "verified").await?;
        Ok(Some((pending, held)))
    }

    /// Releases the held cookies, flags the session and sends the member on.
    pub(crate) async fn finish_login(&self, session: &mut Session, ctx: &RequestCtx, ticket: &str, address: &str) -> Result<bool> {
        let (pending, held) = match self.release_login(ticket).await {
            Ok(Some(released)) => released,
            Ok(None) => return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await,
            Err(e) => return self.unavailable(session, &e).await,
        };
        crate::metrics::outcome("verified");
        tracing::info!(user = %pending.user, address = %address, outcome = "verified", "login completed with second factor");

        let mut headers: Vec<(&'static str, String)> = held.into_iter().map(|c| ("set-cookie", c)).collect();
        headers.push(("set-cookie", cookies::clear_pending_cookie(ctx.tls)));
        if Self::is_json(session) {
            let body = serde_json::json!({ "ok": true, "redirect": pending.target }).to_string();
            return self.respond(session, 200, headers, "application/json", body).await;
        }
        headers.push(("location", pending.target.clone()));
        self.respond(session, 303, headers, "text/plain; charset=utf-8", String::new()).await
    }

    pub(crate) async fn open_cookies(&self, ticket: &str, sealed: &str) -> std::result::Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        let blob = data_encoding::BASE64.decode(sealed.as_bytes())?;
        let vault = self.vault.clone();
        let aad = format!("otpgate-pending\0{ticket}");
        let plain = tokio::task::spawn_blocking(move || vault.decrypt(&blob, aad.as_bytes())).await??;
        Ok(serde_json::from_slice(&plain)?)
    }

    pub(crate) async fn flag_sessions(&self, set_cookies: &[String], user: &str, state: &str) -> std::result::Result<(), StoreError> {
        let flag = serde_json::to_vec(&SessionFlag { user: user.to_string(), state: state.to_string() }).expect("flag serialises");
        for header in set_cookies {
            if let Some(cookie) = cookies::parse_set_cookie(header) {
                if cookie.name == self.settings.app.session_cookie && !cookie.deletes {
                    self.store.put_session_flag(&cookie.value, &flag, self.settings.app.session_lifetime_secs).await?;
                }
            }
        }
        Ok(())
    }

    /// Holds the application's cookies back and sends the member to the challenge.
    pub(crate) async fn hold_login(&self, user: &str, set_cookies: Vec<String>, target: String, enroll: bool) -> std::result::Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let ticket = data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 32]>());
        let vault = self.vault.clone();
        let aad = format!("otpgate-pending\0{ticket}");
        let plain = serde_json::to_vec(&set_cookies)?;
        let sealed = tokio::task::spawn_blocking(move || vault.encrypt(&plain, aad.as_bytes())).await??;
        let pending = PendingLogin {
            user: user.to_string(),
            target,
            sealed_cookies: data_encoding::BASE64.encode(&sealed),
            enroll,
        };
        self.store
            .put_pending(&ticket, &serde_json::to_vec(&pending)?, self.settings.gateway.pending_login_ttl_secs)
            .await?;
        Ok(ticket)
    }
}

/// Normalises a typed code: ASCII spaces and tabs anywhere are removed,
/// because authenticator apps show codes as `123 456`. Nothing else is
/// changed, so letters or other digit scripts still fail the format check.
pub fn normalize_code(input: &str) -> String {
    input.chars().filter(|c| *c != ' ' && *c != '\t').collect()
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
        ctx.tls = session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some();
        let peer = session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let forwarded: Vec<String> = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let forwarded: Vec<&str> = forwarded.iter().map(String::as_str).collect();
        ctx.client = Some(client_ip::client_ip(peer, &forwarded, &self.settings.gateway.trusted_proxies));

        headers::strip_identity(session.req_header_mut(), &self.settings.app.identity_header);

        let raw_path = session.req_header().uri.path().to_string();
        let canonical = match path::canonicalize(&raw_path) {
            Ok(canonical) => canonical,
            Err(e) => return self.bad_request(session, &format!("Invalid request path: {e}.")).await,
        };
        if canonical != raw_path {
            ctx.rewritten_path = Some(canonical.clone());
        }

        let prefix = self.settings.gateway.prefix.clone();
        if let Some(rest) = canonical.strip_prefix(prefix.as_str()) {
            return self.serve_gateway_page(session, ctx, rest).await;
        }
        if path::same_route(&canonical, prefix.trim_end_matches('/')) {
            return self.serve_gateway_page(session, ctx, "").await;
        }

        let cookie_header = session.req_header().headers.get("cookie").and_then(|v| v.to_str().ok()).map(str::to_string);
        let method = session.req_header().method.as_str().to_string();

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
            let user = username_from(route, &body).unwrap_or_default();
            let address = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();
            let limits = &self.settings.rate_limit;
            let counted = async {
                let per_user = self.store.count(&RateKey::PasswordUser(&user), limits.password_per_user.window_secs).await?;
                let per_address = self.store.count(&RateKey::PasswordAddress(&address), limits.password_per_address.window_secs).await?;
                Ok::<_, StoreError>((per_user, per_address))
            };
            let (per_user, per_address) = match counted.await {
                Ok(counts) => counts,
                Err(e) => return self.unavailable(session, &e).await,
            };
            if per_user > u64::from(limits.password_per_user.limit) || per_address > u64::from(limits.password_per_address.limit) {
                crate::metrics::outcome("password_rate_limited");
                tracing::warn!(user = %user, address = %address, outcome = "password_rate_limited", "login rejected: too many password attempts");
                let body = self.pages.message("Too many attempts", "Too many sign-in attempts. Wait 15 minutes and try again.", true, None);
                return self.respond_page(session, 429, Vec::new(), body).await;
            }
            let route = route.clone();
            return self.proxy_login(session, ctx, &route, &user, body).await;
        }

        // Session enforcement.
        let session_cookie = self.settings.app.session_cookie.clone();
        let session_values: Vec<String> = cookie_header
            .as_deref()
            .map(|h| cookies::values(h, &session_cookie).into_iter().map(str::to_string).collect())
            .unwrap_or_default();
        let public = path::is_public(&canonical, &self.settings.app.public_paths);
        if session_values.is_empty() {
            if !public && self.pending_cookie_value(session).is_some() && method == "GET" {
                let challenge = format!("{prefix}challenge");
                return self.respond(session, 303, vec![("location", challenge)], "text/plain; charset=utf-8", String::new()).await;
            }
            return Ok(false);
        }
        let mut identity = None;
        for value in &session_values {
            match self.store.session_flag(value).await {
                Ok(Some(bytes)) => {
                    let flag: Option<SessionFlag> = serde_json::from_slice(&bytes).ok();
                    match flag {
                        Some(flag) if identity.as_ref().is_none_or(|u: &String| *u == flag.user) => identity = Some(flag.user),
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
                if path::same_route(&canonical, &self.settings.app.logout_path) {
                    for value in &session_values {
                        if let Err(e) = self.store.delete_session_flag(value).await {
                            return self.unavailable(session, &e).await;
                        }
                    }
                    crate::metrics::outcome("logout");
                    tracing::info!(user = %user, outcome = "logout", "session flag removed");
                }
                ctx.identity = Some(user);
                Ok(false)
            }
            None if public => {
                // Forward without the unverified session cookie.
                let stripped = cookie_header.as_deref().and_then(|h| cookies::without(h, |name| name == session_cookie));
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
                let clear = ("set-cookie", cookies::clear_cookie(&session_cookie));
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

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer()))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, request: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        headers::strip_identity(request, &self.settings.app.identity_header);
        if let Some(user) = &ctx.identity {
            request.insert_header(self.settings.app.identity_header.clone(), user.as_str())?;
        }
        if let Some(canonical) = &ctx.rewritten_path {
            let query = request.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let uri: http::Uri = format!("{canonical}{query}").parse().map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
            request.set_uri(uri);
        }
        // Gateway cookies stay at the gateway.
        if let Some(header) = request.headers.get("cookie").and_then(|v| v.to_str().ok()).map(str::to_string) {
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

    #[test]
    fn code_spaces_are_removed_only() {
        assert_eq!(normalize_code(" 123 456 "), "123456");
        assert_eq!(normalize_code("١٢٣"), "١٢٣");
        assert_eq!(normalize_code("123456abc"), "123456abc");
    }
}
