//! The second-factor challenge: pending logins, TOTP and backup-code
//! checks with their counters, and releasing the held session.

use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use otpgate_hsm::TimeStep;

use crate::cookies;
use crate::gateway::{now_unix, Gateway, RequestCtx, MAX_FORM_BYTES};
use crate::pages::{BACKUP_REJECTED, CODE_REJECTED};
use crate::record::EnrollmentRecord;
use crate::store::{RateKey, StoreError};


/// A pending login: the application accepted the password, the member has
/// not given the second factor yet.
#[derive(Serialize, Deserialize)]
pub(crate) struct PendingLogin {
    pub(crate) user: String,
    /// The redirect target the application chose, already checked.
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

pub(crate) fn csrf_for(ticket: &str) -> String {
    crate::store::digest_hex(format!("otpgate-csrf\0{ticket}").as_bytes())[..32].to_string()
}

/// Normalises a typed code: ASCII spaces and tabs anywhere are removed,
/// because authenticator apps show codes as `123 456`. Nothing else is
/// changed, so letters or other digit scripts still fail the format check.
pub fn normalize_code(input: &str) -> String {
    input.chars().filter(|c| *c != ' ' && *c != '\t').collect()
}

impl Gateway {
    pub(crate) async fn challenge_page(&self, session: &mut Session, ctx: &RequestCtx, error: Option<&str>) -> Result<bool> {
        let Some(ticket) = self.pending_cookie_value(session) else {
            return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await;
        };
        match self.store().pending(&ticket).await {
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

        let pending: PendingLogin = match self.store().pending(&ticket).await {
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
        let counted = self
            .store()
            .count_pair(
                (&RateKey::SecondFactorUser(&user), limits.second_factor_per_user.window_secs),
                (&RateKey::SecondFactorAddress(&address), limits.second_factor_per_address.window_secs),
            )
            .await;
        let (per_user, per_address) = match counted {
            Ok(counts) => counts,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let user_over = per_user > u64::from(limits.second_factor_per_user.limit);
        let address_over = per_address > u64::from(limits.second_factor_per_address.limit);
        if user_over || address_over {
            if let Err(e) = self.store().take_pending(&ticket).await {
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
            wait = wait.max(self.store().peek_count(&RateKey::SecondFactorUser(user)).await.map(|(_, ttl)| ttl).unwrap_or(0));
        }
        if let Some(address) = address {
            wait = wait.max(self.store().peek_count(&RateKey::SecondFactorAddress(address)).await.map(|(_, ttl)| ttl).unwrap_or(0));
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
        let (Some(bytes), used) = self.store().record_and_used_step(user).await? else {
            return Ok(false);
        };
        crate::metrics::HSM_OPERATIONS.with_label_values(&["totp_verify"]).inc();
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
            Some(step) => Ok(self.store().consume_step(user, step.0).await?),
            None => Ok(false),
        }
    }

    /// Checks a backup code for `user` and marks it used. A code of the
    /// wrong shape costs no hashing.
    pub(crate) async fn verify_backup(&self, user: &str, typed: &str) -> std::result::Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let Some(code) = crate::backup::normalize(typed) else {
            return Ok(false);
        };
        let Some(bytes) = self.store().record(user).await? else {
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
            Some(entry) => Ok(self.store().consume_backup(user, &entry).await?),
            None => Ok(false),
        }
    }

    /// Takes the pending login of `ticket`, decrypts its held cookies and
    /// flags the application session as verified. Returns `None` when the
    /// pending login is gone (finished by a concurrent request, or expired).
    pub(crate) async fn release_login(&self, ticket: &str) -> std::result::Result<Option<(PendingLogin, Vec<String>)>, Box<dyn std::error::Error + Send + Sync>> {
        let Some(bytes) = self.store().take_pending(ticket).await? else {
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
                    self.store().put_session_flag(&cookie.value, &flag, self.settings.app.session_lifetime_secs).await?;
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
        self.store()
            .put_pending(&ticket, &serde_json::to_vec(&pending)?, self.settings.gateway.pending_login_ttl_secs)
            .await?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spaces_are_removed_only() {
        assert_eq!(normalize_code(" 123 456 "), "123456");
        assert_eq!(normalize_code("١٢٣"), "١٢٣");
        assert_eq!(normalize_code("123456abc"), "123456abc");
    }
}
