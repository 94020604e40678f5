//! Cost of one TOTP verification through the vault against the raw PKCS#11
//! calls it needs, on one SoftHSM token.
//!
//! Run with `cargo bench --bench hsm_verify`. Every verification uses
//! window 1 (three candidate steps) and a code that matches none of them,
//! so all three HMACs are computed. The `raw/*` cases issue the same calls
//! with cryptoki on a session of their own, so the difference to
//! `verify/*` is the vault's overhead: session pool, key-handle cache,
//! allocations and code truncation.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use otpgate_config::Secret;
use otpgate_hsm::{seed_object_template, Algorithm, KeyMode, SealedSeed, Seed, TotpParams, UserId, Vault, VaultOptions};

/// Path of the SoftHSM library that Debian's softhsm2 package installs.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "otpgate-bench";
const USER_PIN: &str = "4711-bench";
const SO_PIN: &str = "0815-bench";
/// `CKA_LABEL` of the vault's wrapping key.
const WRAPPING_KEY_LABEL: &str = "otpgate-wrapping-key";
/// Verification time: 2023-11-14T22:13:20Z, time step 56 666 666.
const UNIX_TIME: u64 = 1_700_000_000;
const WINDOW: u64 = 1;

/// Creates a SoftHSM configuration with one initialised token in `dir` and
/// points `SOFTHSM2_CONF` at it. Must run before the first `C_Initialize`,
/// because SoftHSM reads the variable only then.
fn create_token(dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).expect("create token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    let output = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin", SO_PIN, "--pin", USER_PIN])
        .output()
        .expect("softhsm2-util is installed (Debian package softhsm2)");
    assert!(
        output.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::env::set_var("SOFTHSM2_CONF", &conf);
}

fn open_vault(mode: KeyMode) -> Vault {
    let options = VaultOptions {
        module: MODULE.into(),
        token_label: TOKEN_LABEL.into(),
        key_mode: mode,
        pool_size: 8,
    };
    let vault = Vault::open(&options, &Secret::new(USER_PIN.into())).expect("open vault");
    vault.init_keys().expect("create vault keys");
    vault
}

/// Opens a logged-in read-write session on the bench token, as the vault's
/// pool does. The vault has already initialised the library and logged in,
/// and PKCS#11 keeps both per process, so `CKR_CRYPTOKI_ALREADY_INITIALIZED`
/// and `CKR_USER_ALREADY_LOGGED_IN` are expected.
fn open_raw_session() -> Session {
    let context = Pkcs11::new(MODULE).expect("load SoftHSM module");
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => panic!("C_Initialize failed: {err}"),
    }
    let slot = context
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|slot| {
            let info = context.get_token_info(*slot).expect("C_GetTokenInfo");
            info.label().trim_end() == TOKEN_LABEL
        })
        .expect("bench token not found");
    let session = context.open_rw_session(slot).expect("C_OpenSession");
    match session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(err) => panic!("C_Login failed: {err}"),
    }
    session
}

/// Returns a code that matches none of the candidate steps, so a
/// verification computes every HMAC and finds nothing.
fn non_matching_code(vault: &Vault, sealed: &SealedSeed, params: &TotpParams) -> String {
    let step = params.step_at(UNIX_TIME).0;
    let valid: Vec<String> = (step - WINDOW..=step + WINDOW)
        .map(|counter| vault.hotp(sealed, params, counter).expect("HOTP"))
        .collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|code| !valid.contains(code))
        .expect("three codes cannot cover all six-digit codes")
}

/// Runs the PKCS#11 calls of a wrapped-mode verification directly:
/// `C_UnwrapKey`, one `C_Sign` per step, `C_DestroyObject`.
fn raw_wrapped_ops(session: &Session, wrapping_key: ObjectHandle, blob: &[u8], steps: &[u64]) -> Vec<Vec<u8>> {
    let template = seed_object_template(false, None);
    let key = session
        .unwrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, blob, &template)
        .expect("C_UnwrapKey");
    let macs = steps
        .iter()
        .map(|step| session.sign(&Mechanism::Sha1Hmac, key, &step.to_be_bytes()).expect("C_Sign"))
        .collect();
    session.destroy_object(key).expect("C_DestroyObject");
    macs
}

/// Runs the PKCS#11 calls of a token-mode verification directly: the
/// object search the vault does, with the same template, and one `C_Sign`
/// per step.
fn raw_token_ops(session: &Session, id: &[u8; 16], steps: &[u64]) -> Vec<Vec<u8>> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
        ])
        .expect("C_FindObjects");
    let key = *found.first().expect("token seed object exists");
    steps
        .iter()
        .map(|step| session.sign(&Mechanism::Sha1Hmac, key, &step.to_be_bytes()).expect("C_Sign"))
        .collect()
}

fn hsm_verify(c: &mut Criterion) {
    let dir = tempfile::Builder::new().prefix("otpgate-bench-").tempdir().expect("create temporary directory");
    create_token(dir.path());

    let seed_bytes: Vec<u8> = (0..20).map(|_| rand::random::<u8>()).collect();
    let params = TotpParams::default();
    let wrapped_vault = open_vault(KeyMode::Wrapped);
    let token_vault = open_vault(KeyMode::Token);
    let wrapped_user = UserId("bench-wrapped".into());
    let token_user = UserId("bench-token".into());
    let wrapped = wrapped_vault
        .seal(&wrapped_user, &Seed::from_bytes(seed_bytes.clone()).unwrap(), Algorithm::SHA1)
        .expect("seal wrapped");
    let token = token_vault
        .seal(&token_user, &Seed::from_bytes(seed_bytes).unwrap(), Algorithm::SHA1)
        .expect("seal token");
    let SealedSeed::Wrapped(blob) = &wrapped else {
        panic!("wrapped-mode vault returned {wrapped:?}, expected SealedSeed::Wrapped");
    };
    assert_eq!(token, SealedSeed::Token(token_user.token_object_id()));

    let step = params.step_at(UNIX_TIME).0;
    let steps = [step + 1, step, step - 1];
    let code = non_matching_code(&wrapped_vault, &wrapped, &params);
    for (vault, sealed) in [(&wrapped_vault, &wrapped), (&token_vault, &token)] {
        let valid = vault.hotp(sealed, &params, step).expect("HOTP");
        let matched = vault.verify(sealed, &params, &valid, UNIX_TIME, WINDOW, None).expect("verify");
        assert_eq!(matched.map(|s| s.0), Some(step), "a valid code must match");
        let unmatched = vault.verify(sealed, &params, &code, UNIX_TIME, WINDOW, None).expect("verify");
        assert_eq!(unmatched, None, "code {code} must match no step");
    }

    let session = open_raw_session();
    let wrapping_key = *session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(WRAPPING_KEY_LABEL.as_bytes().to_vec()),
        ])
        .expect("C_FindObjects")
        .first()
        .expect("wrapping key exists");
    let token_id = token_user.token_object_id();
    // Both raw paths must reach the same seed, or they would not measure
    // the work a verification does.
    assert_eq!(
        raw_wrapped_ops(&session, wrapping_key, blob, &steps),
        raw_token_ops(&session, &token_id, &steps),
        "wrapped and token seed give different HMACs"
    );
    let sign_key = session
        .unwrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, blob, &seed_object_template(false, None))
        .expect("C_UnwrapKey");

    let mut group = c.benchmark_group("hsm");
    group.bench_function("verify/wrapped", |b| {
        b.iter(|| wrapped_vault.verify(black_box(&wrapped), &params, black_box(&code), UNIX_TIME, WINDOW, None))
    });
    group.bench_function("verify/token", |b| {
        b.iter(|| token_vault.verify(black_box(&token), &params, black_box(&code), UNIX_TIME, WINDOW, None))
    });
    group.bench_function("raw/wrapped_ops", |b| {
        b.iter(|| raw_wrapped_ops(&session, wrapping_key, black_box(blob), black_box(&steps)))
    });
    group.bench_function("raw/token_ops", |b| {
        b.iter(|| raw_token_ops(&session, black_box(&token_id), black_box(&steps)))
    });
    group.bench_function("raw/sign", |b| {
        b.iter(|| session.sign(&Mechanism::Sha1Hmac, sign_key, &black_box(step).to_be_bytes()).expect("C_Sign"))
    });
    group.finish();

    session.destroy_object(sign_key).expect("C_DestroyObject");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    targets = hsm_verify
}
criterion_main!(benches);
