//! The member's own pages: 2FA settings, enrollment, backup codes and
//! disabling 2FA, plus the backup-code challenge.

use bytes::Bytes;
use data_encoding::BASE64;
use minijinja::context;
use otpgate_hsm::{SealedSeed, TotpParams, UserId};
use pingora::prelude::*;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::challenge::{csrf_for, normalize_code, PendingLogin, SessionFlag};
use crate::gateway::{now_unix, Gateway, RequestCtx, MAX_FORM_BYTES};
use crate::pages::CODE_REJECTED;
use crate::record::EnrollmentRecord;
use crate::{backup, cookies, otpauth};

/// How long an enrollment may wait for its confirming code, in seconds.
const ENROLLMENT_TTL_SECS: u64 = 600;

/// The member on a member page, with the credential that identifies them.
pub(crate) enum Member {
    /// A logged-in member, by the application session cookie.
    Session { user: String, cookie: String },
    /// A member in the middle of a login that policy sends to enrollment.
    Pending { user: String, ticket: String },
}

impl Member {
    fn user(&self) -> &str {
        match self {
            Member::Session { user, .. } | Member::Pending { user, .. } => user,
        }
    }

    fn csrf(&self) -> String {
        match self {
            Member::Session { cookie, .. } => csrf_for(&format!("session\0{cookie}")),
            Member::Pending { ticket, .. } => csrf_for(ticket),
        }
    }
}

/// A member page's form with the member it belongs to.
struct MemberForm {
    member: Member,
    fields: Vec<(String, String)>,
    user: String,
    /// The client address, for logs and rate limits.
    address: String,
}

/// A seed shown to the member but not confirmed yet.
#[derive(Serialize, Deserialize)]
struct Enrollment {
    /// `SealedSeed::to_bytes` of the wrapped seed, base64.
    sealed_seed: String,
    algorithm: String,
    digits: u32,
    period: u64,
    /// The otpauth URI, encrypted with the HSM blob key, for the PNG and
    /// for showing the page again after a wrong code.
    sealed_uri: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

fn enrollment_aad(user: &str) -> String {
    format!("otpgate-enrollment\0{user}")
}

impl Gateway {
    /// Finds the member of a request: a flagged application session, or a
    /// pending login that must enroll. `Ok(None)` if neither.
    async fn member(&self, session: &Session) -> std::result::Result<Option<Member>, BoxError> {
        let header = session.req_header().headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
        let values = cookies::values(header, &self.settings.app.session_cookie);
        if let [cookie] = values.as_slice() {
            if let Some(bytes) = self.store().session_flag(cookie).await? {
                let flag: SessionFlag = serde_json::from_slice(&bytes)?;
                return Ok(Some(Member::Session { user: flag.user, cookie: cookie.to_string() }));
            }
        }
        if let Some(ticket) = self.pending_cookie_value(session) {
            if let Some(bytes) = self.store().pending(&ticket).await? {
                let pending: PendingLogin = serde_json::from_slice(&bytes)?;
                if pending.enroll {
                    return Ok(Some(Member::Pending { user: pending.user, ticket }));
                }
            }
        }
        Ok(None)
    }

    /// Resolves the member, or responds itself (login redirect or 503) and returns `None`.
    async fn require_member(&self, session: &mut Session, ctx: &RequestCtx) -> Result<Option<Member>> {
        match self.member(session).await {
            Ok(Some(member)) => Ok(Some(member)),
            Ok(None) => {
                self.login_again(session, ctx, "Sign in first to manage two-factor authentication.").await?;
                Ok(None)
            }
            Err(e) => {
                self.unavailable(session, &e).await?;
                Ok(None)
            }
        }
    }

    /// Reads a gateway form and checks its CSRF token. Responds itself
    /// and returns `None` when the form is too large or forged.
    async fn read_form(&self, session: &mut Session, member: &Member) -> Result<Option<Vec<(String, String)>>> {
        let Some(body) = self.read_body(session, MAX_FORM_BYTES).await? else {
            let page = self.pages.message("Request too large", "The form is too large.", true, None);
            self.respond_page(session, 413, Vec::new(), page).await?;
            return Ok(None);
        };
        let fields = form_fields(&body);
        let expected = member.csrf();
        let ok: bool = subtle::ConstantTimeEq::ct_eq(field(&fields, "csrf_token").as_bytes(), expected.as_bytes()).into();
        if !ok {
            self.bad_request(session, "The form expired. Go back, reload the page and try again.").await?;
            return Ok(None);
        }
        Ok(Some(fields))
    }

    /// Resolves the member and reads a checked form. Responds itself and
    /// returns `None` when either fails.
    async fn member_form(&self, session: &mut Session, ctx: &RequestCtx) -> Result<Option<MemberForm>> {
        let Some(member) = self.require_member(session, ctx).await? else {
            return Ok(None);
        };
        let Some(fields) = self.read_form(session, &member).await? else {
            return Ok(None);
        };
        let user = member.user().to_string();
        let address = ctx.client.map(|ip| ip.to_string()).unwrap_or_default();
        Ok(Some(MemberForm { member, fields, user, address }))
    }

    pub(crate) async fn settings_page(&self, session: &mut Session, ctx: &RequestCtx, error: Option<&str>) -> Result<bool> {
        let Some(member) = self.require_member(session, ctx).await? else {
            return Ok(true);
        };
        let user = member.user().to_string();
        let (record, used) = match tokio::try_join!(self.store().record(&user), self.store().backup_used_count(&user)) {
            Ok(found) => found,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let backup_total = match &record {
            Some(bytes) => match self.open_record(&user, bytes.clone()).await {
                Ok(record) => record.backup_codes.len(),
                Err(e) => return self.unavailable(session, &e).await,
            },
            None => 0,
        };
        let body = self.pages.render(
            "settings.html",
            "Security settings",
            context! {
                user => user,
                enrolled => record.is_some(),
                backup_left => backup_total.saturating_sub(used),
                csrf => member.csrf(),
                error => error,
            },
        );
        self.respond_page(session, if error.is_some() { 400 } else { 200 }, Vec::new(), body).await
    }

    async fn open_record(&self, user: &str, bytes: Vec<u8>) -> std::result::Result<EnrollmentRecord, BoxError> {
        let vault = self.vault.clone();
        let user = user.to_string();
        Ok(tokio::task::spawn_blocking(move || EnrollmentRecord::open(&user, &bytes, &vault)).await??)
    }

    /// Checks the member's password against the application.
    async fn password_ok(&self, user: &str, password: &str, address: &str) -> std::result::Result<bool, BoxError> {
        let limits = &self.settings.rate_limit;
        let count = self
            .store()
            .count(&crate::store::RateKey::PasswordUser(user), limits.password_per_user.window_secs)
            .await?;
        if count > u64::from(limits.password_per_user.limit) {
            crate::metrics::outcome("password_rate_limited");
            tracing::warn!(user = %user, address = %address, outcome = "password_rate_limited", "password re-check rejected: too many attempts");
            return Ok(false);
        }
        Ok(crate::app_login::password_accepted(&self.connector, &self.peer(), &self.settings, user, password).await?)
    }

    pub(crate) async fn enroll_start(&self, session: &mut Session, ctx: &RequestCtx) -> Result<bool> {
        let Some(MemberForm { member, fields, user, address }) = self.member_form(session, ctx).await? else {
            return Ok(true);
        };
        match self.store().record(&user).await {
            Ok(Some(_)) => return self.settings_page(session, ctx, Some("Two-factor authentication is already on. Disable it first to configure a new app.")).await,
            Ok(None) => {}
            Err(e) => return self.unavailable(session, &e).await,
        }
        match self.password_ok(&user, field(&fields, "password"), &address).await {
            Ok(true) => {}
            Ok(false) => {
                crate::metrics::outcome("password_rejected");
                tracing::info!(user = %user, address = %address, outcome = "password_rejected", "enrollment rejected: password not accepted");
                return self.settings_page(session, ctx, Some("The password was not accepted.")).await;
            }
            Err(e) => return self.unavailable(session, &e).await,
        }
        self.begin_enrollment(session, &member, None).await
    }

    pub(crate) async fn enroll_required_page(&self, session: &mut Session, ctx: &RequestCtx) -> Result<bool> {
        let Some(member) = self.require_member(session, ctx).await? else {
            return Ok(true);
        };
        let user = member.user().to_string();
        match self.store().enrollment(&user).await {
            Ok(Some(bytes)) => self.show_enrollment(session, &member, &bytes, None).await,
            Ok(None) => self.begin_enrollment(session, &member, None).await,
            Err(e) => self.unavailable(session, &e).await,
        }
    }

    /// Generates a seed in the HSM, keeps it wrapped as the member's
    /// enrollment in progress, and shows it once.
    async fn begin_enrollment(&self, session: &mut Session, member: &Member, error: Option<&str>) -> Result<bool> {
        let user = member.user().to_string();
        let totp = self.settings.totp.clone();
        let params = TotpParams { algorithm: totp.algorithm, digits: totp.digits, period: totp.period };
        let vault = self.vault.clone();
        let issuer = self.settings.app.issuer.clone();
        let account = user.clone();
        let made = tokio::task::spawn_blocking(move || -> std::result::Result<Vec<u8>, BoxError> {
            let seed = vault.generate_seed(totp.seed_bytes)?;
            let sealed = vault.seal_wrapped(&seed, params.algorithm)?;
            let uri = otpauth::uri(&issuer, &account, &seed.to_base32(), &params);
            let sealed_uri = vault.encrypt(uri.as_bytes(), enrollment_aad(&account).as_bytes())?;
            let enrollment = Enrollment {
                sealed_seed: BASE64.encode(&sealed.to_bytes()),
                algorithm: params.algorithm.as_str().to_string(),
                digits: params.digits,
                period: params.period,
                sealed_uri: BASE64.encode(&sealed_uri),
            };
            Ok(serde_json::to_vec(&enrollment)?)
        })
        .await;
        let bytes = match made {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return self.unavailable(session, &e).await,
            Err(e) => return self.unavailable(session, &e).await,
        };
        if let Err(e) = self.store().put_enrollment(&user, &bytes, ENROLLMENT_TTL_SECS).await {
            return self.unavailable(session, &e).await;
        }
        crate::metrics::outcome("enrollment_started");
        tracing::info!(user = %user, outcome = "enrollment_started", "enrollment started");
        self.show_enrollment(session, member, &bytes, error).await
    }

    async fn enrollment_uri(&self, user: &str, bytes: &[u8]) -> std::result::Result<(Enrollment, Zeroizing<String>), BoxError> {
        let enrollment: Enrollment = serde_json::from_slice(bytes)?;
        let blob = BASE64.decode(enrollment.sealed_uri.as_bytes())?;
        let vault = self.vault.clone();
        let aad = enrollment_aad(user);
        let plain = tokio::task::spawn_blocking(move || vault.decrypt(&blob, aad.as_bytes())).await??;
        let uri = Zeroizing::new(String::from_utf8(plain.to_vec())?);
        Ok((enrollment, uri))
    }

    async fn show_enrollment(&self, session: &mut Session, member: &Member, bytes: &[u8], error: Option<&str>) -> Result<bool> {
        let user = member.user().to_string();
        let (enrollment, uri) = match self.enrollment_uri(&user, bytes).await {
            Ok(found) => found,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let secret = uri
            .split("secret=")
            .nth(1)
            .and_then(|rest| rest.split('&').next())
            .unwrap_or_default()
            .to_string();
        let secret = Zeroizing::new(secret);
        let body = self.pages.render(
            "enroll.html",
            "Configure 2FA",
            context! {
                required => matches!(member, Member::Pending { .. }),
                error => error,
                qr_svg => otpauth::svg(&uri),
                secret_grouped => otpauth::grouped(&secret).as_str(),
                account => &user,
                digits => enrollment.digits,
                period => enrollment.period,
                csrf => member.csrf(),
            },
        );
        self.respond_page(session, if error.is_some() { 401 } else { 200 }, Vec::new(), body).await
    }

    pub(crate) async fn enroll_qr(&self, session: &mut Session, ctx: &RequestCtx) -> Result<bool> {
        let Some(member) = self.require_member(session, ctx).await? else {
            return Ok(true);
        };
        let user = member.user().to_string();
        let bytes = match self.store().enrollment(&user).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let body = self.pages.message("Not found", "No enrollment is in progress.", true, None);
                return self.respond_page(session, 404, Vec::new(), body).await;
            }
            Err(e) => return self.unavailable(session, &e).await,
        };
        let (_, uri) = match self.enrollment_uri(&user, &bytes).await {
            Ok(found) => found,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let png = otpauth::png(&uri);
        let mut response = pingora::http::ResponseHeader::build(200, Some(3))?;
        response.insert_header("content-type", "image/png")?;
        response.insert_header("cache-control", "no-store")?;
        response.insert_header("content-length", png.len().to_string())?;
        session.write_response_header(Box::new(response), false).await?;
        session.write_response_body(Some(Bytes::from(png)), true).await?;
        Ok(true)
    }

    pub(crate) async fn enroll_verify(&self, session: &mut Session, ctx: &RequestCtx) -> Result<bool> {
        let Some(MemberForm { member, fields, user, address }) = self.member_form(session, ctx).await? else {
            return Ok(true);
        };
        let code = normalize_code(field(&fields, "code"));
        let bytes = match self.store().enrollment(&user).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return self.settings_page(session, ctx, Some("The enrollment expired. Start again.")).await,
            Err(e) => return self.unavailable(session, &e).await,
        };

        let limits = &self.settings.rate_limit;
        match self.store().count(&crate::store::RateKey::SecondFactorUser(&user), limits.second_factor_per_user.window_secs).await {
            Ok(count) if count > u64::from(limits.second_factor_per_user.limit) => {
                let body = self.pages.message("Too many attempts", "Too many wrong codes. Wait 15 minutes and start again.", true, None);
                return self.respond_page(session, 429, Vec::new(), body).await;
            }
            Ok(_) => {}
            Err(e) => return self.unavailable(session, &e).await,
        }

        let confirmed = match self.confirm_enrollment(&user, &bytes, &code).await {
            Ok(confirmed) => confirmed,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let Some(codes) = confirmed else {
            crate::metrics::outcome("enrollment_code_rejected");
            tracing::info!(user = %user, address = %address, outcome = "enrollment_code_rejected", "enrollment code rejected");
            return self.show_enrollment(session, &member, &bytes, Some(CODE_REJECTED)).await;
        };
        crate::metrics::outcome("enrolled");
        tracing::info!(user = %user, address = %address, outcome = "enrolled", "two-factor authentication activated");

        let mut headers = Vec::new();
        let mut finish = "/".to_string();
        if let Member::Pending { ticket, .. } = &member {
            match self.release_login(ticket).await {
                Ok(Some((pending, held))) => {
                    finish = pending.target;
                    headers.extend(held.into_iter().map(|c| ("set-cookie", c)));
                    headers.push(("set-cookie", cookies::clear_pending_cookie(ctx.tls)));
                }
                Ok(None) => return self.login_again(session, ctx, "Two-factor authentication is on. Your sign-in expired meanwhile; please sign in again.").await,
                Err(e) => return self.unavailable(session, &e).await,
            }
        } else if let Member::Session { cookie, .. } = &member {
            // The session that enrolled counts as verified from now on.
            let flag = serde_json::to_vec(&SessionFlag { user: user.clone(), state: "verified".into() }).expect("flag serialises");
            if let Err(e) = self.store().put_session_flag(cookie, &flag, self.settings.app.session_lifetime_secs).await {
                return self.unavailable(session, &e).await;
            }
            finish = format!("{}settings", self.settings.gateway.prefix);
        }
        self.show_backup_codes(session, headers, &codes, &finish).await
    }

    /// Checks the confirming code against the enrollment in progress and,
    /// if it matches, saves the record with new backup codes. Returns the
    /// codes to show, or `None` for a wrong code (nothing saved).
    async fn confirm_enrollment(&self, user: &str, bytes: &[u8], code: &str) -> std::result::Result<Option<Vec<Zeroizing<String>>>, BoxError> {
        let enrollment: Enrollment = serde_json::from_slice(bytes)?;
        let sealed = SealedSeed::from_bytes(&BASE64.decode(enrollment.sealed_seed.as_bytes())?)?;
        let algorithm = otpgate_hsm::Algorithm::parse(&enrollment.algorithm).ok_or("unknown algorithm in enrollment")?;
        let params = TotpParams { algorithm, digits: enrollment.digits, period: enrollment.period };
        if !otpgate_hsm::is_well_formed(code, params.digits) {
            return Ok(None);
        }
        let vault = self.vault.clone();
        let window = self.settings.totp.window;
        let (code, check_sealed) = (code.to_string(), sealed.clone());
        let step = tokio::task::spawn_blocking(move || vault.verify(&check_sealed, &params, &code, now_unix(), window, None)).await??;
        let Some(step) = step else {
            return Ok(None);
        };
        // Only one request may turn this enrollment into a record.
        if self.store().take_enrollment(user).await?.is_none() {
            return Ok(None);
        }
        let vault = self.vault.clone();
        let user_owned = user.to_string();
        let (record_bytes, codes) = tokio::task::spawn_blocking(move || -> std::result::Result<_, BoxError> {
            let stored = vault.commit(&UserId(user_owned.clone()), sealed)?;
            let (codes, entries) = backup::generate();
            let record = EnrollmentRecord::new(&user_owned, &stored, &params, now_unix(), entries);
            Ok((record.seal(&vault)?, codes))
        })
        .await??;
        // The confirming code's step counts as used.
        self.store().put_record(user, &record_bytes, Some(step.0)).await?;
        Ok(Some(codes))
    }

    async fn show_backup_codes(&self, session: &mut Session, headers: Vec<(&'static str, String)>, codes: &[Zeroizing<String>], finish: &str) -> Result<bool> {
        let shown: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
        let body = self.pages.render("backup_codes.html", "Backup recovery codes", context! { codes => shown, finish => finish });
        self.respond_page(session, 200, headers, body).await
    }

    pub(crate) async fn backup_challenge_page(&self, session: &mut Session, ctx: &RequestCtx, error: Option<&str>) -> Result<bool> {
        let Some(ticket) = self.pending_cookie_value(session) else {
            return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await;
        };
        match self.store().pending(&ticket).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.login_again(session, ctx, "Your sign-in has expired. Please sign in again.").await,
            Err(e) => return self.unavailable(session, &e).await,
        }
        let body = self.pages.render("backup_challenge.html", "Use Backup Code", context! { csrf => csrf_for(&ticket), error => error });
        self.respond_page(session, if error.is_some() { 401 } else { 200 }, Vec::new(), body).await
    }

    pub(crate) async fn regenerate_backup(&self, session: &mut Session, ctx: &RequestCtx) -> Result<bool> {
        let Some(MemberForm { fields, user, address, .. }) = self.member_form(session, ctx).await? else {
            return Ok(true);
        };
        let password = field(&fields, "password");
        let code = normalize_code(field(&fields, "code"));
        let proven = if !code.is_empty() {
            self.verify_totp(&user, &code).await
        } else {
            self.password_ok(&user, password, &address).await
        };
        match proven {
            Ok(true) => {}
            Ok(false) => return self.settings_page(session, ctx, Some("Enter your current password or a current authentication code.")).await,
            Err(e) => return self.unavailable(session, &e).await,
        }
        let bytes = match self.store().record(&user).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return self.settings_page(session, ctx, Some("Two-factor authentication is off.")).await,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let used = match self.store().used_step(&user).await {
            Ok(used) => used,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let mut record = match self.open_record(&user, bytes).await {
            Ok(record) => record,
            Err(e) => return self.unavailable(session, &e).await,
        };
        let vault = self.vault.clone();
        let made = tokio::task::spawn_blocking(move || -> std::result::Result<_, BoxError> {
            let (codes, entries) = backup::generate();
            record.backup_codes = entries;
            Ok((record.seal(&vault)?, codes))
        })
        .await;
        let (record_bytes, codes) = match made {
            Ok(Ok(made)) => made,
            Ok(Err(e)) => return self.unavailable(session, &e).await,
            Err(e) => return self.unavailable(session, &e).await,
        };
        if let Err(e) = self.store().put_record(&user, &record_bytes, used).await {
            return self.unavailable(session, &e).await;
        }
        crate::metrics::outcome("backup_codes_regenerated");
        tracing::info!(user = %user, address = %address, outcome = "backup_codes_regenerated", "backup codes regenerated");
        let finish = format!("{}settings", self.settings.gateway.prefix);
        self.show_backup_codes(session, Vec::new(), &codes, &finish).await
    }

    pub(crate) async fn disable(&self, session: &mut Session, ctx: &RequestCtx) -> Result<bool> {
        let Some(MemberForm { member, fields, user, address }) = self.member_form(session, ctx).await? else {
            return Ok(true);
        };
        let typed = field(&fields, "code");
        let second_factor = {
            let totp = normalize_code(typed);
            if totp.bytes().all(|b| b.is_ascii_digit()) && !totp.is_empty() {
                self.verify_totp(&user, &totp).await
            } else {
                self.verify_backup(&user, typed).await
            }
        };
        let password = self.password_ok(&user, field(&fields, "password"), &address).await;
        match (password, second_factor) {
            (Ok(true), Ok(true)) => {}
            (Ok(_), Ok(_)) => return self.settings_page(session, ctx, Some("Enter your current password and a current authentication code or a backup code.")).await,
            (Err(e), _) | (_, Err(e)) => return self.unavailable(session, &e).await,
        }
        if let Err(e) = self.store().delete_record(&user).await {
            return self.unavailable(session, &e).await;
        }
        let vault = self.vault.clone();
        let id = UserId(user.clone());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || vault.delete_token_seed(&id)).await {
            tracing::warn!(user = %user, error = %e, "removing the token-mode seed object failed");
        }
        if let Member::Session { cookie, .. } = &member {
            let flag = serde_json::to_vec(&SessionFlag { user: user.clone(), state: "no2fa".into() }).expect("flag serialises");
            if let Err(e) = self.store().put_session_flag(cookie, &flag, self.settings.app.session_lifetime_secs).await {
                return self.unavailable(session, &e).await;
            }
        }
        crate::metrics::outcome("disabled");
        tracing::info!(user = %user, address = %address, outcome = "disabled", "two-factor authentication disabled by the member");
        let settings = format!("{}settings", self.settings.gateway.prefix);
        let body = self.pages.message("Two-factor authentication is off", "Two-factor authentication is now off for your account.", false, Some((&settings, "Back to settings")));
        self.respond_page(session, 200, Vec::new(), body).await
    }
}

