//! The settings types: what the TOML file may contain, and the validated result.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{CidrBlock, ConfigError, Secret, SecretSource};

/// All validated settings of one gateway instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: ListenSettings,
    pub upstream: UpstreamSettings,
    pub app: AppSettings,
    pub gateway: GatewaySettings,
    pub rate_limit: RateLimitSettings,
    pub redis: RedisSettings,
    pub hsm: HsmSettings,
    pub totp: TotpSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    #[serde(default)]
    pub listen: ListenSettings,
    pub upstream: UpstreamSettings,
    pub app: AppSettings,
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    pub hsm: RawHsm,
    #[serde(default)]
    pub totp: TotpSettings,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: LogSettings,
}

/// Listening addresses for member traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSettings {
    /// Plain HTTP listener, `host:port`. `None` disables it.
    #[serde(default = "default_http_listen")]
    pub http: Option<String>,
    /// Optional TLS listener.
    pub tls: Option<TlsListen>,
}

impl Default for ListenSettings {
    fn default() -> Self {
        ListenSettings {
            http: default_http_listen(),
            tls: None,
        }
    }
}

fn default_http_listen() -> Option<String> {
    Some("127.0.0.1:8080".into())
}

/// A TLS listener with its certificate chain and private key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    pub address: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The one application behind the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// `host:port` of the application.
    pub address: String,
    /// Connect to the application over TLS.
    #[serde(default)]
    pub tls: bool,
    /// Server name sent and verified when `tls` is true.
    #[serde(default)]
    pub sni: String,
}

/// Whether members must use a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// 2FA is recommended on the settings page but not enforced.
    #[default]
    Optional,
    /// A member without 2FA is sent to enrollment right after the password.
    Required,
}

/// Letter-case rule of the application's login names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsernameCase {
    /// Names differing only in letter case are one member.
    #[default]
    Insensitive,
    /// Letter case distinguishes members.
    Sensitive,
}

impl AppSettings {
    /// Returns the member name the gateway keys state by: the submitted
    /// login name without surrounding whitespace, lower-cased unless
    /// `username_case` is `sensitive`.
    pub fn member_name(&self, submitted: &str) -> String {
        let trimmed = submitted.trim();
        match self.username_case {
            UsernameCase::Insensitive => trimmed.to_lowercase(),
            UsernameCase::Sensitive => trimmed.to_string(),
        }
    }
}

/// Encoding of the credentials at the application's login endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// A JSON object.
    Json,
}

/// One login endpoint of the application that the gateway intercepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRoute {
    /// Exact request path, for example `/login`.
    pub path: String,
    /// HTTP method, upper case.
    #[serde(default = "default_login_method")]
    pub method: String,
    pub body: BodyFormat,
    #[serde(default = "default_username_field")]
    pub username_field: String,
    #[serde(default = "default_password_field")]
    pub password_field: String,
    /// Response status codes that can mean success. A login counts as
    /// accepted only when the status is listed here and the response sets
    /// the session cookie to a non-empty value.
    #[serde(default = "default_success_status")]
    pub success_status: Vec<u16>,
}

fn default_login_method() -> String {
    "POST".into()
}
fn default_username_field() -> String {
    "username".into()
}
fn default_password_field() -> String {
    "password".into()
}
fn default_success_status() -> Vec<u16> {
    vec![200, 302, 303]
}

/// Settings that adapt the gateway to the application, which it cannot change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// Name of the application's session cookie.
    pub session_cookie: String,
    /// Lifetime of the application's sessions in seconds; session flags expire after it.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime_secs: u64,
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// The application's login page, where unverified browsers are sent.
    #[serde(default = "default_login_page")]
    pub login_page: String,
    /// Paths reachable without a verified session. An entry ending in `/`
    /// matches every path below it; other entries match exactly. The entry
    /// `/` alone matches only the root page.
    #[serde(default)]
    pub public_paths: Vec<String>,
    /// Largest login request body that is read and forwarded, in bytes.
    #[serde(default = "default_max_login_body")]
    pub max_login_body_bytes: usize,
    #[serde(default)]
    pub policy: Policy,
    /// Issuer shown in authenticator apps.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Product name shown on the gateway's pages.
    #[serde(default = "default_issuer")]
    pub product_name: String,
    /// Insert a link to the 2FA settings page into the application's HTML pages.
    #[serde(default)]
    pub inject_settings_link: bool,
    /// Letter-case rule of login names. `insensitive` (default) lower-cases
    /// names before the gateway looks up a member, so `ALICE` cannot pass as
    /// a member without 2FA when the application logs in `alice`. Use
    /// `sensitive` only for applications that keep `Bob` and `bob` apart.
    #[serde(default)]
    pub username_case: UsernameCase,
    /// Header that carries the verified member name to an application that
    /// reads it, for example `X-Otpgate-User`. Any copy of it sent by a
    /// client is removed. Unset (the default), no such header is sent,
    /// because an application that cannot be changed does not read one.
    #[serde(default)]
    pub identity_header: Option<String>,
    #[serde(rename = "login")]
    pub login_routes: Vec<LoginRoute>,
}

fn default_session_lifetime() -> u64 {
    14 * 24 * 3600
}
fn default_logout_path() -> String {
    "/logout".into()
}
fn default_login_page() -> String {
    "/login".into()
}
fn default_max_login_body() -> usize {
    64 * 1024
}
fn default_issuer() -> String {
    "Meelance".into()
}

/// Settings of the gateway's own behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Reserved path prefix of the gateway's pages; starts and ends with `/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Peers whose `X-Forwarded-For` is trusted: IP addresses or CIDR blocks.
    #[serde(default)]
    pub trusted_proxies: Vec<CidrBlock>,
    /// How long a pending login (password accepted, code not yet given) lives, in seconds.
    #[serde(default = "default_pending_ttl")]
    pub pending_login_ttl_secs: u64,
    /// Seconds that open connections get to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Milliseconds a session flag read from Redis is trusted without
    /// another read. A logout or reset on another instance reaches this one
    /// at most this much later; 0 turns the cache off.
    #[serde(default = "default_session_cache_ms")]
    pub session_cache_ms: u64,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            prefix: default_prefix(),
            trusted_proxies: Vec::new(),
            pending_login_ttl_secs: default_pending_ttl(),
            shutdown_grace_secs: default_shutdown_grace(),
            session_cache_ms: default_session_cache_ms(),
            threads: default_threads(),
        }
    }
}

fn default_prefix() -> String {
    "/_otpgate/".into()
}
fn default_pending_ttl() -> u64 {
    300
}
fn default_shutdown_grace() -> u64 {
    5
}
fn default_session_cache_ms() -> u64 {
    1000
}
fn default_threads() -> usize {
    1
}

/// A fixed-window limit: at most `limit` events per `window_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub limit: u32,
    pub window_secs: u64,
}

/// Rate limits, counted in Redis and shared by every gateway instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    #[serde(default = "default_password_per_user")]
    pub password_per_user: Limit,
    #[serde(default = "default_password_per_address")]
    pub password_per_address: Limit,
    /// Failed second-factor attempts per member; reaching it ends the pending login.
    #[serde(default = "default_second_factor_per_user")]
    pub second_factor_per_user: Limit,
    #[serde(default = "default_second_factor_per_address")]
    pub second_factor_per_address: Limit,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            password_per_user: default_password_per_user(),
            password_per_address: default_password_per_address(),
            second_factor_per_user: default_second_factor_per_user(),
            second_factor_per_address: default_second_factor_per_address(),
        }
    }
}

fn default_password_per_user() -> Limit {
    Limit { limit: 10, window_secs: 900 }
}
fn default_password_per_address() -> Limit {
    Limit { limit: 50, window_secs: 900 }
}
fn default_second_factor_per_user() -> Limit {
    Limit { limit: 5, window_secs: 900 }
}
fn default_second_factor_per_address() -> Limit {
    Limit { limit: 20, window_secs: 900 }
}

/// The Redis server of the shared state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` or `rediss://` for TLS.
    #[serde(default = "default_redis_url")]
    pub url: String,
    /// Prefix of every key the gateway writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Time limit of one Redis command, in milliseconds.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: default_redis_url(),
            key_prefix: default_key_prefix(),
            timeout_ms: default_redis_timeout(),
        }
    }
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/".into()
}
fn default_key_prefix() -> String {
    "otpgate:".into()
}
fn default_redis_timeout() -> u64 {
    1000
}

/// Storage of member seeds in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// One wrapping key in the token; each member's seed is kept wrapped in Redis.
    #[default]
    Wrapped,
    /// One token object per member. Only for small deployments.
    Token,
}

/// The PKCS#11 token.
#[derive(Debug, Clone)]
pub struct HsmSettings {
    /// Path of the PKCS#11 library.
    pub module: PathBuf,
    /// Label of the token; the slot is found by it.
    pub token_label: String,
    pub key_mode: KeyMode,
    /// Number of logged-in sessions kept open.
    pub pool_size: usize,
    /// Source of the user PIN.
    pub pin_source: SecretSource,
}

impl HsmSettings {
    /// Reads the user PIN from its environment variable or file.
    pub fn pin(&self) -> Result<Secret, ConfigError> {
        self.pin_source.read("hsm.pin")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHsm {
    #[serde(default = "default_module")]
    pub module: PathBuf,
    #[serde(default = "default_token_label")]
    pub token_label: String,
    #[serde(default)]
    pub key_mode: KeyMode,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    pub pin: Option<toml::Value>,
    pub pin_env: Option<String>,
    pub pin_file: Option<PathBuf>,
}

fn default_module() -> PathBuf {
    "/usr/lib/softhsm/libsofthsm2.so".into()
}
fn default_token_label() -> String {
    "otpgate".into()
}
fn default_pool_size() -> usize {
    8
}

/// HMAC hash function of TOTP (RFC 6238).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum Algorithm {
    #[default]
    #[serde(alias = "sha1", alias = "SHA-1")]
    SHA1,
    #[serde(alias = "sha256", alias = "SHA-256")]
    SHA256,
    #[serde(alias = "sha512", alias = "SHA-512")]
    SHA512,
}

impl Algorithm {
    /// Returns the name used in `otpauth://` URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SHA1 => "SHA1",
            Algorithm::SHA256 => "SHA256",
            Algorithm::SHA512 => "SHA512",
        }
    }

    /// Parses `SHA1`, `SHA256` or `SHA512` in any letter case, with or without a hyphen.
    pub fn parse(text: &str) -> Option<Algorithm> {
        match text.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA1" => Some(Algorithm::SHA1),
            "SHA256" => Some(Algorithm::SHA256),
            "SHA512" => Some(Algorithm::SHA512),
            _ => None,
        }
    }
}

/// Parameters of newly enrolled TOTP seeds, and the verification window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpSettings {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Code length: 6 or 8.
    #[serde(default = "default_digits")]
    pub digits: u32,
    /// Time step in seconds: 30 or 60.
    #[serde(default = "default_period")]
    pub period: u64,
    /// Time steps accepted on each side of the current one.
    #[serde(default = "default_window")]
    pub window: u64,
    /// Length of generated seeds in bytes; at least 16.
    #[serde(default = "default_seed_bytes")]
    pub seed_bytes: usize,
}

impl Default for TotpSettings {
    fn default() -> Self {
        TotpSettings {
            algorithm: Algorithm::default(),
            digits: default_digits(),
            period: default_period(),
            window: default_window(),
            seed_bytes: default_seed_bytes(),
        }
    }
}

fn default_digits() -> u32 {
    6
}
fn default_period() -> u64 {
    30
}
fn default_window() -> u64 {
    1
}
fn default_seed_bytes() -> usize {
    20
}

/// The admin listener: health, readiness, metrics and the admin API.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `host:port`; loopback by default. `None` disables the listener.
    pub listen: Option<String>,
    /// Bearer token of the admin API. Without it the admin API is off;
    /// health, readiness and metrics stay on.
    pub token_source: Option<SecretSource>,
}

impl AdminSettings {
    /// Reads the admin bearer token, if one is configured.
    pub fn token(&self) -> Result<Option<Secret>, ConfigError> {
        self.token_source
            .as_ref()
            .map(|source| source.read("admin.token"))
            .transpose()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: Option<String>,
    pub token: Option<toml::Value>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
            token: None,
            token_env: None,
            token_file: None,
        }
    }
}

fn default_admin_listen() -> Option<String> {
    Some("127.0.0.1:9090".into())
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `otpgate=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}
