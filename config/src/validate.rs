//! Checks every value of the raw TOML model and builds [`Settings`].

use std::net::SocketAddr;

use crate::model::{RawAdmin, RawHsm, RawSettings};
use crate::{
    AdminSettings, AppSettings, ConfigError, GatewaySettings, HsmSettings, Limit, ListenSettings,
    RateLimitSettings, RedisSettings, SecretSource, Settings, TotpSettings, UpstreamSettings,
};

/// Largest accepted `app.max_login_body_bytes`: the gateway keeps a login
/// body in memory while it forwards it, and login forms are small.
const MAX_LOGIN_BODY_LIMIT: usize = 1024 * 1024;

pub(crate) fn settings(raw: RawSettings) -> Result<Settings, ConfigError> {
    listen(&raw.listen)?;
    upstream(&raw.upstream)?;
    app(&raw.app)?;
    gateway(&raw.gateway, &raw.app)?;
    rate_limits(&raw.rate_limit)?;
    redis(&raw.redis)?;
    let hsm = hsm(raw.hsm)?;
    totp(&raw.totp)?;
    let admin = admin(raw.admin)?;
    Ok(Settings {
        listen: raw.listen,
        upstream: raw.upstream,
        app: raw.app,
        gateway: raw.gateway,
        rate_limit: raw.rate_limit,
        redis: raw.redis,
        hsm,
        totp: raw.totp,
        admin,
        log: raw.log,
    })
}

fn socket_address(key: &'static str, value: &str) -> Result<(), ConfigError> {
    value.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{value:?} is not an IP address with a port"),
            "write it as 127.0.0.1:8080 or [::1]:8080",
        )
    })
}

fn listen(listen: &ListenSettings) -> Result<(), ConfigError> {
    if listen.http.is_none() && listen.tls.is_none() {
        return Err(ConfigError::invalid(
            "listen",
            "neither listen.http nor listen.tls is set",
            "set listen.http = \"127.0.0.1:8080\" or add a [listen.tls] table",
        ));
    }
    if let Some(http) = &listen.http {
        socket_address("listen.http", http)?;
    }
    if let Some(tls) = &listen.tls {
        socket_address("listen.tls.address", &tls.address)?;
        for (key, path) in [("listen.tls.cert", &tls.cert), ("listen.tls.key", &tls.key)] {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    key,
                    format!("file {} not found", path.display()),
                    "point it at a PEM file readable by the otpgate user",
                ));
            }
        }
    }
    Ok(())
}

fn upstream(upstream: &UpstreamSettings) -> Result<(), ConfigError> {
    let port_ok = upstream
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(ConfigError::invalid(
            "upstream.address",
            format!("{:?} is not host:port", upstream.address),
            "write it as 127.0.0.1:8000 or app.internal:8000",
        ));
    }
    if upstream.tls && upstream.sni.is_empty() {
        return Err(ConfigError::invalid(
            "upstream.sni",
            "upstream.tls is true but no server name is set",
            "set upstream.sni to the name in the application's certificate",
        ));
    }
    Ok(())
}

/// Accepts a cookie name or header name: RFC 7230 token characters only.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn path(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if !value.starts_with('/') || value.contains(['?', '#', '\\', ' ']) || value.contains("//") {
        return Err(ConfigError::invalid(
            key,
            format!("{value:?} is not an absolute URL path"),
            "write a path that starts with / and has no query, fragment, spaces or backslashes",
        ));
    }
    Ok(())
}

fn app(app: &AppSettings) -> Result<(), ConfigError> {
    if !is_token(&app.session_cookie) {
        return Err(ConfigError::invalid(
            "app.session_cookie",
            format!("{:?} is not a valid cookie name", app.session_cookie),
            "set it to the name of the application's session cookie, for example \"sessionid\"",
        ));
    }
    if app.session_lifetime_secs == 0 {
        return Err(ConfigError::invalid(
            "app.session_lifetime_secs",
            "0 is not a lifetime",
            "set it to the application's session lifetime in seconds, for example 1209600",
        ));
    }
    path("app.logout_path", &app.logout_path)?;
    path("app.login_page", &app.login_page)?;
    for public in &app.public_paths {
        path("app.public_paths", public)?;
    }
    if app.max_login_body_bytes == 0 || app.max_login_body_bytes > MAX_LOGIN_BODY_LIMIT {
        return Err(ConfigError::invalid(
            "app.max_login_body_bytes",
            format!("{} is outside 1..={MAX_LOGIN_BODY_LIMIT}", app.max_login_body_bytes),
            "login forms are small; the default 65536 fits almost every application",
        ));
    }
    if app.issuer.trim().is_empty() {
        return Err(ConfigError::invalid(
            "app.issuer",
            "the issuer is empty",
            "set it to the name members see in their authenticator app",
        ));
    }
    if let Some(name) = app.identity_header.as_deref().filter(|name| !is_token(name)) {
        return Err(ConfigError::invalid(
            "app.identity_header",
            format!("{name:?} is not a valid header name"),
            "use letters, digits and hyphens, for example \"X-Otpgate-User\"",
        ));
    }
    if app.login_routes.is_empty() {
        return Err(ConfigError::invalid(
            "app.login",
            "no login route is configured",
            "add an [[app.login]] table with the path of the application's login endpoint",
        ));
    }
    for (index, route) in app.login_routes.iter().enumerate() {
        path("app.login.path", &route.path)?;
        if app.login_routes[..index].iter().any(|r| r.path == route.path && r.method == route.method) {
            return Err(ConfigError::invalid(
                "app.login.path",
                format!("{} {} is listed twice", route.method, route.path),
                "keep one [[app.login]] table per endpoint",
            ));
        }
        if !matches!(route.method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(ConfigError::invalid(
                "app.login.method",
                format!("{:?} is not a method that carries a login body", route.method),
                "use POST, PUT or PATCH in upper case",
            ));
        }
        if route.username_field.is_empty() || route.password_field.is_empty() {
            return Err(ConfigError::invalid(
                "app.login.username_field",
                "a field name is empty",
                "set username_field and password_field to the names the login form uses",
            ));
        }
        if route.success_status.is_empty() || route.success_status.iter().any(|s| !(100..=599).contains(s)) {
            return Err(ConfigError::invalid(
                "app.login.success_status",
                format!("{:?} is not a list of HTTP status codes", route.success_status),
                "list the statuses of a successful login, for example [302, 303]",
            ));
        }
    }
    Ok(())
}

fn gateway(gateway: &GatewaySettings, app: &AppSettings) -> Result<(), ConfigError> {
    let prefix = &gateway.prefix;
    if prefix.len() < 3 || !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(ConfigError::invalid(
            "gateway.prefix",
            format!("{prefix:?} must start and end with / and name a folder"),
            "use the default \"/_otpgate/\" unless the application already owns that path",
        ));
    }
    path("gateway.prefix", prefix)?;
    if app.login_routes.iter().any(|r| r.path.starts_with(prefix.as_str())) {
        return Err(ConfigError::invalid(
            "gateway.prefix",
            format!("{prefix:?} contains a login route of the application"),
            "choose a prefix the application does not use",
        ));
    }
    if gateway.session_cache_ms > 60_000 {
        return Err(ConfigError::invalid(
            "gateway.session_cache_ms",
            format!("{} is more than 60000", gateway.session_cache_ms),
            "a logout on another instance takes effect this much later; keep it to a second or two",
        ));
    }
    if !(1..=256).contains(&gateway.threads) {
        return Err(ConfigError::invalid(
            "gateway.threads",
            format!("{} is outside 1..=256", gateway.threads),
            "use the number of CPU cores the gateway may use",
        ));
    }
    if gateway.shutdown_grace_secs > 600 {
        return Err(ConfigError::invalid(
            "gateway.shutdown_grace_secs",
            format!("{} is more than 600", gateway.shutdown_grace_secs),
            "a few seconds let open requests finish; 5 is the default",
        ));
    }
    if !(30..=3600).contains(&gateway.pending_login_ttl_secs) {
        return Err(ConfigError::invalid(
            "gateway.pending_login_ttl_secs",
            format!("{} is outside 30..=3600", gateway.pending_login_ttl_secs),
            "300 gives members five minutes to enter their code",
        ));
    }
    Ok(())
}

fn rate_limits(limits: &RateLimitSettings) -> Result<(), ConfigError> {
    let all: [(&'static str, Limit); 4] = [
        ("rate_limit.password_per_user", limits.password_per_user),
        ("rate_limit.password_per_address", limits.password_per_address),
        ("rate_limit.second_factor_per_user", limits.second_factor_per_user),
        ("rate_limit.second_factor_per_address", limits.second_factor_per_address),
    ];
    for (key, limit) in all {
        if limit.limit == 0 || limit.window_secs == 0 || limit.window_secs > 86_400 {
            return Err(ConfigError::invalid(
                key,
                format!("limit {} per {} s is not usable", limit.limit, limit.window_secs),
                "use a limit of at least 1 and a window of 1 to 86400 seconds",
            ));
        }
    }
    Ok(())
}

fn redis(redis: &RedisSettings) -> Result<(), ConfigError> {
    let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| redis.url.starts_with(scheme));
    if !scheme_ok {
        return Err(ConfigError::invalid(
            "redis.url",
            "the URL scheme is not redis://, rediss:// or unix://",
            "write it as redis://127.0.0.1:6379/0",
        ));
    }
    if redis.key_prefix.is_empty() || redis.key_prefix.contains(['{', '}', ' ']) {
        return Err(ConfigError::invalid(
            "redis.key_prefix",
            format!("{:?} is empty or contains braces or spaces", redis.key_prefix),
            "use a short name ending in a colon, for example \"otpgate:\"",
        ));
    }
    if !(10..=60_000).contains(&redis.timeout_ms) {
        return Err(ConfigError::invalid(
            "redis.timeout_ms",
            format!("{} is outside 10..=60000", redis.timeout_ms),
            "1000 suits a Redis on the same network",
        ));
    }
    Ok(())
}

fn hsm(raw: RawHsm) -> Result<HsmSettings, ConfigError> {
    if raw.pin.is_some() {
        return Err(ConfigError::LiteralSecret {
            key: "hsm.pin",
            fix: "remove hsm.pin and set hsm.pin_env = \"OTPGATE_HSM_PIN\" (then export that variable) or hsm.pin_file = \"/run/secrets/hsm-pin\"",
        });
    }
    if !raw.module.is_file() {
        return Err(ConfigError::invalid(
            "hsm.module",
            format!("file {} not found", raw.module.display()),
            "install softhsm2 or set hsm.module to your PKCS#11 library",
        ));
    }
    if raw.token_label.is_empty() || raw.token_label.len() > 32 {
        return Err(ConfigError::invalid(
            "hsm.token_label",
            format!("{:?} is empty or longer than 32 bytes", raw.token_label),
            "set it to the label given at token initialisation, for example \"otpgate\"",
        ));
    }
    if !(1..=256).contains(&raw.pool_size) {
        return Err(ConfigError::invalid(
            "hsm.pool_size",
            format!("{} is outside 1..=256", raw.pool_size),
            "one session per worker thread is enough; 8 is the default",
        ));
    }
    let pin_source = SecretSource::from_keys("hsm.pin", raw.pin_env, raw.pin_file, "OTPGATE_HSM_PIN")?;
    Ok(HsmSettings {
        module: raw.module,
        token_label: raw.token_label,
        key_mode: raw.key_mode,
        pool_size: raw.pool_size,
        pin_source,
    })
}

fn totp(totp: &TotpSettings) -> Result<(), ConfigError> {
    if !matches!(totp.digits, 6 | 8) {
        return Err(ConfigError::invalid(
            "totp.digits",
            format!("{} is not 6 or 8", totp.digits),
            "use 6, which every authenticator app supports",
        ));
    }
    if !matches!(totp.period, 30 | 60) {
        return Err(ConfigError::invalid(
            "totp.period",
            format!("{} is not 30 or 60", totp.period),
            "use 30, which every authenticator app supports",
        ));
    }
    if totp.window > 10 {
        return Err(ConfigError::invalid(
            "totp.window",
            format!("{} steps is more than 10", totp.window),
            "1 step on each side covers normal clock drift",
        ));
    }
    if !(16..=64).contains(&totp.seed_bytes) {
        return Err(ConfigError::invalid(
            "totp.seed_bytes",
            format!("{} is outside 16..=64", totp.seed_bytes),
            "use 20 bytes (160 bits), the length RFC 4226 recommends",
        ));
    }
    Ok(())
}

fn admin(raw: RawAdmin) -> Result<AdminSettings, ConfigError> {
    if raw.token.is_some() {
        return Err(ConfigError::LiteralSecret {
            key: "admin.token",
            fix: "remove admin.token and set admin.token_env = \"OTPGATE_ADMIN_TOKEN\" or admin.token_file = \"/run/secrets/admin-token\"",
        });
    }
    if let Some(listen) = &raw.listen {
        socket_address("admin.listen", listen)?;
    }
    let token_source = match (raw.token_env, raw.token_file) {
        (None, None) => None,
        (env, file) => Some(SecretSource::from_keys("admin.token", env, file, "OTPGATE_ADMIN_TOKEN")?),
    };
    Ok(AdminSettings {
        listen: raw.listen,
        token_source,
    })
}
