//! The second-factor challenge: pending logins, TOTP and backup-code
//! checks with their counters, and releasing the held session.

use pingora::prelude::*;
use serde::{Deserialize, Serialize};

use otpgate_hsm::TimeStep;

use crate::cookies;
use crate::gateway::{now_unix, BoxError, Gateway, RequestCtx, MAX_FORM_BYTES};
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

/// A code as submitted on the challenge page.
enum Submitted {
    Totp(String),
    Backup(zeroize::Zeroizing<String>),
}

/// The match of a code: a time step, or a backup-code entry.
enum Matched {
    Step(u64),
    Backup(String),
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

        // Round trip 1: the pending login and the per-address count.
        // Counting before any HSM call cuts a burst of guesses off at the
        // counter rather than checking it.
        let address = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();
        let limits = &self.settings.rate_limit;
        let address_counter = (&RateKey::SecondFactorAddress(&address), limits.second_factor_per_address.window_secs);
        let (pending, per_address) = match self.store().pending_and_count(&ticket, address_counter).await {
            Ok(read) => read,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let Some(pending) = pending.and_then(|bytes| serde_json::from_slice::<PendingLogin>(&bytes).ok()) else {
            return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await;
        };
        let user = pending.user.clone();

        // Round trip 2: the per-member count, the record and the used step.
        let user_counter = (&RateKey::SecondFactorUser(&user), limits.second_factor_per_user.window_secs);
        let (per_user, record, used) = match self.store().count_and_record(user_counter, &user).await {
            Ok(read) => read,
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

        let submitted = if backup { Submitted::Backup(zeroize::Zeroizing::new(code)) } else { Submitted::Totp(code) };
        let held_cookies = match self.check_second_factor(&ticket, &pending, submitted, record, used).await {
            Ok(held_cookies) => held_cookies,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let Some(held_cookies) = held_cookies else {
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
        };

        // Round trip 4: take the pending login and flag its sessions.
        let flags = self.session_flags(&held_cookies, &user, "verified");
        match self.store().take_pending_and_flag(&ticket, &flags, self.settings.app.session_lifetime_secs).await {
            Ok(Some(_)) => self.send_released(session, ctx, pending, held_cookies, &address).await,
            Ok(None) => {
                tracing::info!(user = %user, address = %address, outcome = "pending_login_gone", "code verified, but the pending login was already taken or expired");
                self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await
            }
            Err(e) => self.unavailable(session, &e).await,
        }
    }

    /// Checks a submitted code against the member's record and, when it
    /// matches, decrypts the held cookies in the same blocking call and
    /// marks the code used (round trip 3). Returns the held cookies only if
    /// the code matched and was not used before. A malformed code costs no
    /// HSM call, no hashing and no Redis write.
    async fn check_second_factor(
        &self,
        ticket: &str,
        pending: &PendingLogin,
        submitted: Submitted,
        record: Option<Vec<u8>>,
        used: Option<u64>,
    ) -> std::result::Result<Option<Vec<String>>, BoxError> {
        let submitted = match submitted {
            Submitted::Totp(code) if otpgate_hsm::is_well_formed(&code, 6) || otpgate_hsm::is_well_formed(&code, 8) => Submitted::Totp(code),
            Submitted::Backup(typed) => match crate::backup::normalize(&typed) {
                Some(code) => Submitted::Backup(code),
                None => return Ok(None),
            },
            Submitted::Totp(_) => return Ok(None),
        };
        let Some(bytes) = record else {
            return Ok(None);
        };
        if matches!(submitted, Submitted::Totp(_)) {
            crate::metrics::HSM_OPERATIONS.with_label_values(&["totp_verify"]).inc();
        }
        let sealed = data_encoding::BASE64.decode(pending.sealed_cookies.as_bytes())?;
        let aad = format!("otpgate-pending\0{ticket}");
        let user = pending.user.clone();
        let window = self.settings.totp.window;
        let outcome = self
            .vault_call(move |vault| -> std::result::Result<_, BoxError> {
                let record = EnrollmentRecord::open(&user, &bytes, vault)?;
                let matched = match submitted {
                    Submitted::Totp(code) => {
                        let params = record.params()?;
                        if !otpgate_hsm::is_well_formed(&code, params.digits) {
                            return Ok(None);
                        }
                        vault.verify(&record.sealed()?, &params, &code, now_unix(), window, used.map(TimeStep))?.map(|step| Matched::Step(step.0))
                    }
                    Submitted::Backup(code) => crate::backup::find_match(&code, &record.backup_codes).cloned().map(Matched::Backup),
                };
                let Some(matched) = matched else {
                    return Ok(None);
                };
                let held_cookies: Vec<String> = serde_json::from_slice(&vault.decrypt(&sealed, aad.as_bytes())?)?;
                Ok(Some((matched, held_cookies)))
            })
            .await?;
        let Some((matched, held_cookies)) = outcome else {
            return Ok(None);
        };
        let fresh = match matched {
            Matched::Step(step) => self.store().consume_step(&pending.user, step).await?,
            Matched::Backup(entry) => self.store().consume_backup(&pending.user, &entry).await?,
        };
        Ok(fresh.then_some(held_cookies))
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
    pub(crate) async fn verify_totp(&self, user: &str, code: &str) -> std::result::Result<bool, BoxError> {
        // Codes are 6 or 8 digits; anything else is rejected before the
        // record (whose MAC check is an HSM call) is even read.
        if !otpgate_hsm::is_well_formed(code, 6) && !otpgate_hsm::is_well_formed(code, 8) {
            return Ok(false);
        }
        let (Some(bytes), used) = self.store().record_and_used_step(user).await? else {
            return Ok(false);
        };
        crate::metrics::HSM_OPERATIONS.with_label_values(&["totp_verify"]).inc();
        let window = self.settings.totp.window;
        let (user_owned, code_owned) = (user.to_string(), code.to_string());
        let step: Option<TimeStep> = self
            .vault_call(move |vault| -> std::result::Result<_, BoxError> {
                let record = EnrollmentRecord::open(&user_owned, &bytes, vault)?;
                let params = record.params()?;
                if !otpgate_hsm::is_well_formed(&code_owned, params.digits) {
                    return Ok(None);
                }
                Ok(vault.verify(&record.sealed()?, &params, &code_owned, now_unix(), window, used.map(TimeStep))?)
            })
            .await?;
        match step {
            Some(step) => Ok(self.store().consume_step(user, step.0).await?),
            None => Ok(false),
        }
    }

    /// Checks a backup code for `user` and marks it used. A code of the
    /// wrong shape costs no hashing.
    pub(crate) async fn verify_backup(&self, user: &str, typed: &str) -> std::result::Result<bool, BoxError> {
        let Some(code) = crate::backup::normalize(typed) else {
            return Ok(false);
        };
        let Some(bytes) = self.store().record(user).await? else {
            return Ok(false);
        };
        let user_owned = user.to_string();
        let entry = self
            .vault_call(move |vault| -> std::result::Result<_, BoxError> {
                let record = EnrollmentRecord::open(&user_owned, &bytes, vault)?;
                Ok(crate::backup::find_match(&code, &record.backup_codes).cloned())
            })
            .await?;
        match entry {
            Some(entry) => Ok(self.store().consume_backup(user, &entry).await?),
            None => Ok(false),
        }
    }

    /// Takes the pending login of `ticket`, decrypts its held cookies and
    /// flags the application session as verified. Returns `None` when the
    /// pending login is gone (finished by a concurrent request, or expired).
    pub(crate) async fn release_login(&self, ticket: &str) -> std::result::Result<Option<(PendingLogin, Vec<String>)>, BoxError> {
        let Some(bytes) = self.store().take_pending(ticket).await? else {
            return Ok(None);
        };
        let pending: PendingLogin = serde_json::from_slice(&bytes)?;
        let held = self.open_cookies(ticket, &pending.sealed_cookies).await?;
        self.flag_sessions(&held, &pending.user, "verified").await?;
        Ok(Some((pending, held)))
    }

    /// Sends a member whose login was just released on: the held cookies,
    /// the pending cookie cleared, and the original target.
    async fn send_released(&self, session: &mut Session, ctx: &RequestCtx, pending: PendingLogin, held_cookies: Vec<String>, address: &str) -> Result<bool> {
        crate::metrics::outcome("verified");
        tracing::info!(user = %pending.user, address = %address, outcome = "verified", "login completed with second factor");

        let mut headers: Vec<(&'static str, String)> = held_cookies.into_iter().map(|c| ("set-cookie", c)).collect();
        headers.push(("set-cookie", cookies::clear_pending_cookie(ctx.tls)));
        if Self::is_json(session) {
            let body = serde_json::json!({ "ok": true, "redirect": pending.target }).to_string();
            return self.respond(session, 200, headers, "application/json", body).await;
        }
        headers.push(("location", pending.target.clone()));
        self.respond(session, 303, headers, "text/plain; charset=utf-8", String::new()).await
    }

    pub(crate) async fn open_cookies(&self, ticket: &str, sealed: &str) -> std::result::Result<Vec<String>, BoxError> {
        let blob = data_encoding::BASE64.decode(sealed.as_bytes())?;
        let aad = format!("otpgate-pending\0{ticket}");
        let plain = self.vault_call(move |vault| Ok(vault.decrypt(&blob, aad.as_bytes())?)).await?;
        Ok(serde_json::from_slice(&plain)?)
    }

    /// Returns the flag to set for each application session that
    /// `set_cookies` opens: the cookie value and the flag's JSON.
    fn session_flags(&self, set_cookies: &[String], user: &str, state: &str) -> Vec<(String, Vec<u8>)> {
        let flag = serde_json::to_vec(&SessionFlag { user: user.to_string(), state: state.to_string() }).expect("flag serialises");
        set_cookies
            .iter()
            .filter_map(|header| cookies::parse_set_cookie(header))
            .filter(|cookie| cookie.name == self.settings.app.session_cookie && !cookie.deletes)
            .map(|cookie| (cookie.value, flag.clone()))
            .collect()
    }

    pub(crate) async fn flag_sessions(&self, set_cookies: &[String], user: &str, state: &str) -> std::result::Result<(), StoreError> {
        for (value, flag) in self.session_flags(set_cookies, user, state) {
            self.store().put_session_flag(&value, &flag, self.settings.app.session_lifetime_secs).await?;
        }
        Ok(())
    }

    /// Holds the application's cookies back and sends the member to the challenge.
    pub(crate) async fn hold_login(&self, user: &str, set_cookies: Vec<String>, target: String, enroll: bool) -> std::result::Result<String, BoxError> {
        let ticket = data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 32]>());
        let aad = format!("otpgate-pending\0{ticket}");
        let plain = serde_json::to_vec(&set_cookies)?;
        let sealed = self.vault_call(move |vault| Ok(vault.encrypt(&plain, aad.as_bytes())?)).await?;
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
