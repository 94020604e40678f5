//! Unit tests of loading and validation.

use super::*;

/// Returns a minimal valid config whose `hsm.module` is the test binary
/// itself, a file that exists on every machine the tests run on.
fn minimal(extra_hsm: &str, extra: &str) -> String {
    let module = std::env::current_exe().unwrap();
    format!(
        r#"
[upstream]
address = "127.0.0.1:8000"

[app]
session_cookie = "sessionid"
[[app.login]]
path = "/login"
body = "form"

[hsm]
module = "{}"
{extra_hsm}

{extra}
"#,
        module.display()
    )
}

fn error_text(toml: &str) -> String {
    Settings::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let settings = Settings::from_toml(&minimal("pin_env = \"PIN\"", "")).unwrap();
    assert_eq!(settings.totp.algorithm, Algorithm::SHA1);
    assert_eq!(settings.totp.digits, 6);
    assert_eq!(settings.totp.period, 30);
    assert_eq!(settings.totp.window, 1);
    assert_eq!(settings.totp.seed_bytes, 20);
    assert_eq!(settings.hsm.key_mode, KeyMode::Wrapped);
    assert_eq!(settings.hsm.pool_size, 8);
    assert_eq!(settings.app.max_login_body_bytes, 65536);
    assert_eq!(settings.app.policy, Policy::Optional);
    assert_eq!(settings.gateway.prefix, "/_otpgate/");
    assert_eq!(settings.hsm.pin_source, SecretSource::Env("PIN".into()));
    assert_eq!(settings.app.identity_header, None);
}

#[test]
fn identity_header_must_be_a_header_name() {
    let with = |name: &str| minimal("pin_env = \"PIN\"", "").replace("session_cookie = \"sessionid\"", &format!("session_cookie = \"sessionid\"\nidentity_header = \"{name}\""));
    let settings = Settings::from_toml(&with("X-Otpgate-User")).unwrap();
    assert_eq!(settings.app.identity_header.as_deref(), Some("X-Otpgate-User"));
    let text = error_text(&with("X Otpgate: User"));
    assert!(text.contains("app.identity_header"), "{text}");
    assert!(text.contains("X Otpgate: User"), "{text}");
}

#[test]
fn unknown_key_is_rejected() {
    let text = error_text(&minimal("pin_env = \"PIN\"\npool_sise = 4", ""));
    assert!(text.contains("pool_sise"), "{text}");
    assert!(text.contains("unknown field"), "{text}");
}

#[test]
fn unknown_section_is_rejected() {
    let text = error_text(&minimal("pin_env = \"PIN\"", "[totps]\ndigits = 6"));
    assert!(text.contains("totps"), "{text}");
}

#[test]
fn literal_pin_is_rejected_with_how_to() {
    let text = error_text(&minimal("pin = \"1234\"", ""));
    assert!(text.contains("hsm.pin"), "{text}");
    assert!(text.contains("pin_env"), "{text}");
    assert!(text.contains("pin_file"), "{text}");
    assert!(!text.contains("1234"), "the error must not echo the PIN: {text}");
}

#[test]
fn literal_admin_token_is_rejected() {
    let text = error_text(&minimal("pin_env = \"PIN\"", "[admin]\ntoken = \"s3cret\""));
    assert!(text.contains("admin.token"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn missing_pin_source_is_rejected() {
    let text = error_text(&minimal("", ""));
    assert!(text.contains("hsm.pin"), "{text}");
    assert!(text.contains("pin_env"), "{text}");
}

#[test]
fn missing_module_names_path_and_fix() {
    let toml = minimal("pin_env = \"PIN\"", "").replace(
        &std::env::current_exe().unwrap().display().to_string(),
        "/x/libsofthsm2.so",
    );
    let text = error_text(&toml);
    assert_eq!(
        text,
        "hsm.module: file /x/libsofthsm2.so not found; install softhsm2 or set hsm.module to your PKCS#11 library"
    );
}

#[test]
fn totp_values_are_range_checked() {
    for (extra, key) in [
        ("[totp]\ndigits = 7", "totp.digits"),
        ("[totp]\nperiod = 45", "totp.period"),
        ("[totp]\nseed_bytes = 10", "totp.seed_bytes"),
        ("[totp]\nwindow = 11", "totp.window"),
    ] {
        let text = error_text(&minimal("pin_env = \"PIN\"", extra));
        assert!(text.starts_with(key), "{extra}: {text}");
    }
}

#[test]
fn algorithm_accepts_each_name() {
    for (name, algorithm) in [("SHA1", Algorithm::SHA1), ("sha256", Algorithm::SHA256), ("SHA512", Algorithm::SHA512)] {
        let settings = Settings::from_toml(&minimal("pin_env = \"PIN\"", &format!("[totp]\nalgorithm = \"{name}\""))).unwrap();
        assert_eq!(settings.totp.algorithm, algorithm);
    }
    let text = error_text(&minimal("pin_env = \"PIN\"", "[totp]\nalgorithm = \"MD5\""));
    assert!(text.contains("MD5"), "{text}");
}

#[test]
fn bad_trusted_proxy_is_rejected() {
    let text = error_text(&minimal("pin_env = \"PIN\"", "[gateway]\ntrusted_proxies = [\"10.0.0.0/40\"]"));
    assert!(text.contains("10.0.0.0/40"), "{text}");
}

#[test]
fn pin_file_strips_one_newline() {
    let path = std::env::temp_dir().join(format!("otpgate-pin-{}", std::process::id()));
    std::fs::write(&path, "98765\n").unwrap();
    let source = SecretSource::File(path.clone());
    assert_eq!(source.read("hsm.pin").unwrap().expose(), "98765");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn unset_pin_variable_names_it() {
    let source = SecretSource::Env("OTPGATE_TEST_UNSET_VARIABLE".into());
    let text = source.read("hsm.pin").unwrap_err().to_string();
    assert!(text.contains("OTPGATE_TEST_UNSET_VARIABLE"), "{text}");
}

#[test]
fn secret_debug_is_redacted() {
    let secret = Secret::new("hunter2".into());
    assert!(!format!("{secret:?}").contains("hunter2"));
}
