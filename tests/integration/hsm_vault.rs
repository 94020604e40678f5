//! The HSM vault against a real SoftHSM token: RFC vectors, agreement with
//! oathtool, key protection, concurrency and bad input.

use std::sync::Arc;

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use otpgate_config::{Algorithm, KeyMode, Secret};
use otpgate_hsm::{seed_object_template, HsmError, SealedSeed, Seed, TotpParams, UserId, Vault, VaultOptions};
use rand::{Rng, SeedableRng};

use crate::harness::softhsm::{self, LABEL_FRESH, LABEL_KILL, LABEL_MAIN, MODULE, USER_PIN};
use crate::harness::totp::oathtool_totp;

const RFC4226_SEED: &[u8] = b"12345678901234567890";

fn rfc6238_seed(algorithm: Algorithm) -> Vec<u8> {
    let base = b"1234567890";
    let len = match algorithm {
        Algorithm::SHA1 => 20,
        Algorithm::SHA256 => 32,
        Algorithm::SHA512 => 64,
    };
    base.iter().cycle().take(len).copied().collect()
}

fn user(name: &str) -> UserId {
    UserId(name.to_string())
}

#[test]
fn rfc4226_appendix_d_vectors_both_modes() {
    let expected = [
        "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489",
    ];
    for mode in [KeyMode::Wrapped, KeyMode::Token] {
        let vault = softhsm::open_vault(LABEL_MAIN, mode, 2);
        let seed = Seed::from_bytes(RFC4226_SEED.to_vec()).unwrap();
        let sealed = vault.seal(&user("rfc4226"), &seed, Algorithm::SHA1).unwrap();
        let params = TotpParams::default();
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(vault.hotp(&sealed, &params, counter as u64).unwrap(), *code, "{mode:?} counter {counter}");
        }
    }
}

#[test]
fn rfc6238_appendix_b_vectors_all_algorithms() {
    let table: [(u64, [&str; 3]); 6] = [
        (59, ["94287082", "46119246", "90693936"]),
        (1111111109, ["07081804", "68084774", "25091201"]),
        (1111111111, ["14050471", "67062674", "99943326"]),
        (1234567890, ["89005924", "91819424", "93441116"]),
        (2000000000, ["69279037", "90698825", "38618901"]),
        (20000000000, ["65353130", "77737706", "47863826"]),
    ];
    let algorithms = [Algorithm::SHA1, Algorithm::SHA256, Algorithm::SHA512];
    for mode in [KeyMode::Wrapped, KeyMode::Token] {
        let vault = softhsm::open_vault(LABEL_MAIN, mode, 2);
        for (index, algorithm) in algorithms.iter().enumerate() {
            let seed = Seed::from_bytes(rfc6238_seed(*algorithm)).unwrap();
            let sealed = vault.seal(&user(&format!("rfc6238-{index}")), &seed, *algorithm).unwrap();
            let params = TotpParams { algorithm: *algorithm, digits: 8, period: 30 };
            for (time, codes) in &table {
                let step = params.step_at(*time);
                let found = vault.verify(&sealed, &params, codes[index], *time, 0, None).unwrap();
                assert_eq!(found, Some(step), "{mode:?} {algorithm:?} T={time}");
            }
        }
    }
}

#[test]
fn thousand_random_cases_match_oathtool() {
    let rng_seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 2);
    let token_vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Token, 2);
    let algorithms = [Algorithm::SHA1, Algorithm::SHA256, Algorithm::SHA512];
    for case in 0..1000 {
        let len = rng.gen_range(10..=64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let algorithm = algorithms[rng.gen_range(0..3)];
        let digits = if rng.gen_bool(0.5) { 6 } else { 8 };
        let period = if rng.gen_bool(0.5) { 30 } else { 60 };
        let time: u64 = rng.gen_range(0..(1u64 << 34));
        let hex = data_encoding::HEXLOWER.encode(&bytes);
        let expected = oathtool_totp(&hex, algorithm, digits, period, time);

        // One case in ten runs in token mode, which writes a token object.
        let vault = if case % 10 == 0 { &token_vault } else { &vault };
        let seed = Seed::from_bytes(bytes).unwrap();
        let sealed = vault.seal(&user("random-case"), &seed, algorithm).unwrap();
        let params = TotpParams { algorithm, digits, period };
        let computed = vault.hotp(&sealed, &params, time / period).unwrap();
        assert_eq!(
            computed, expected,
            "case {case} (rng seed {rng_seed}): {algorithm:?} {digits} digits {period} s, T={time}, seed {hex}"
        );
        let step = vault.verify(&sealed, &params, &expected, time, 1, None).unwrap();
        assert_eq!(step.map(|s| s.0), Some(time / period), "case {case} (rng seed {rng_seed})");
    }
}

#[test]
fn verify_returns_newest_step_above_used() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 2);
    let seed = Seed::from_bytes(RFC4226_SEED.to_vec()).unwrap();
    let sealed = vault.seal_wrapped(&seed, Algorithm::SHA1).unwrap();
    let params = TotpParams::default();
    let now = 1_700_000_000;
    let step = params.step_at(now);
    let code = vault.hotp(&sealed, &params, step.0).unwrap();

    assert_eq!(vault.verify(&sealed, &params, &code, now, 1, None).unwrap(), Some(step));
    assert_eq!(vault.verify(&sealed, &params, &code, now, 1, Some(step)).unwrap(), None);

    let previous = vault.hotp(&sealed, &params, step.0 - 1).unwrap();
    assert_eq!(vault.verify(&sealed, &params, &previous, now, 1, Some(step)).unwrap(), None);
    assert_eq!(vault.verify(&sealed, &params, &previous, now, 0, None).unwrap(), None);
    assert_eq!(
        vault.verify(&sealed, &params, &previous, now, 1, None).unwrap().map(|s| s.0),
        Some(step.0 - 1)
    );
}

#[test]
fn malformed_codes_never_match() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 2);
    let seed = Seed::from_bytes(RFC4226_SEED.to_vec()).unwrap();
    let sealed = vault.seal_wrapped(&seed, Algorithm::SHA1).unwrap();
    let params = TotpParams::default();
    // Counter 1 of the RFC 4226 seed is 287082; strip or pad it.
    let time = 30;
    for code in ["87082", "0287082", "287082 ", " 287082", "٢٨٧٠٨٢", "287082abc", "abc287082", "+87082", ""] {
        assert_eq!(vault.verify(&sealed, &params, code, time, 0, None).unwrap(), None, "{code:?}");
    }
    assert!(vault.verify(&sealed, &params, "287082", time, 0, None).unwrap().is_some());
}

#[test]
fn leading_zero_code_matches_only_with_zero() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 2);
    let seed = Seed::from_bytes(rfc6238_seed(Algorithm::SHA1)).unwrap();
    let sealed = vault.seal_wrapped(&seed, Algorithm::SHA1).unwrap();
    let params = TotpParams { algorithm: Algorithm::SHA1, digits: 8, period: 30 };
    // RFC 6238: T=1111111109 gives 07081804.
    assert!(vault.verify(&sealed, &params, "07081804", 1111111109, 0, None).unwrap().is_some());
    assert!(vault.verify(&sealed, &params, "7081804", 1111111109, 0, None).unwrap().is_none());
}

#[test]
fn short_seed_is_zero_padded_for_hmac() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 2);
    let secret = "JBSWY3DPEHPK3PXP";
    let seed = Seed::from_base32(secret).unwrap();
    assert_eq!(seed.as_bytes().len(), 10);
    let hex = data_encoding::HEXLOWER.encode(seed.as_bytes());
    for algorithm in [Algorithm::SHA1, Algorithm::SHA256, Algorithm::SHA512] {
        let sealed = vault.seal_wrapped(&seed, algorithm).unwrap();
        let params = TotpParams { algorithm, digits: 6, period: 30 };
        let time = 1_234_567_890;
        let expected = oathtool_totp(&hex, algorithm, 6, 30, time);
        assert_eq!(vault.hotp(&sealed, &params, time / 30).unwrap(), expected, "{algorithm:?}");
    }
}

/// Opens a separate session on the main token, as another program would.
fn inspect_session() -> cryptoki::session::Session {
    let context = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    let _ = context.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = context
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == LABEL_MAIN)
        .unwrap();
    let session = context.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())));
    session
}

fn find_by_label(session: &cryptoki::session::Session, label: &str) -> cryptoki::object::ObjectHandle {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("key {label} exists"))
}

#[test]
fn seed_keys_cannot_be_read_or_wrapped_out() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Token, 2);
    let seed = Seed::from_bytes(vec![0x5a; 20]).unwrap();
    let member = user("no-export");
    let pending = vault.seal_wrapped(&seed, Algorithm::SHA1).unwrap();
    let SealedSeed::Wrapped(blob) = pending.clone() else { panic!("seal_wrapped returns a wrapped seed") };
    vault.commit(&member, pending).unwrap();

    let session = inspect_session();
    let wrapping_key = find_by_label(&session, "otpgate-wrapping-key");

    // The form each verification unwraps the seed into.
    let unwrapped = session
        .unwrap_key(
            &cryptoki::mechanism::Mechanism::AesKeyWrapPad,
            wrapping_key,
            &blob,
            &seed_object_template(false, None),
        )
        .unwrap();
    let token_key = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(member.token_object_id().to_vec())])
        .unwrap()[0];

    for (name, key) in [("unwrapped key", unwrapped), ("token key", token_key)] {
        let attributes = session.get_attributes(key, &[AttributeType::Value]).unwrap();
        assert!(
            !attributes.iter().any(|a| matches!(a, Attribute::Value(_))),
            "{name}: CKA_VALUE was readable"
        );
        let wrap = session.wrap_key(&cryptoki::mechanism::Mechanism::AesKeyWrapPad, wrapping_key, key);
        assert!(wrap.is_err(), "{name}: C_WrapKey succeeded");
    }
    session.destroy_object(unwrapped).unwrap();
}

#[test]
fn long_lived_keys_cannot_be_read() {
    let _vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 1);
    let session = inspect_session();
    for label in ["otpgate-wrapping-key", "otpgate-record-key", "otpgate-blob-key"] {
        let key = find_by_label(&session, label);
        let attributes = session.get_attributes(key, &[AttributeType::Value]).unwrap();
        assert!(!attributes.iter().any(|a| matches!(a, Attribute::Value(_))), "{label} readable");
    }
}

#[test]
fn init_keys_is_idempotent_and_status_ready() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 1);
    assert!(vault.init_keys().unwrap().is_empty(), "second init created keys");
    let status = vault.status().unwrap();
    assert!(status.is_ready(), "{status:?}");
    assert_eq!(status.token_label, LABEL_MAIN);
}

/// Closes one session behind the vault's back, as a token reset or a
/// network HSM failover does, through SoftHSM's exported C_CloseSession.
fn close_session(handle: u64) {
    // SAFETY: C_CloseSession takes one CK_SESSION_HANDLE (unsigned long) and
    // returns CK_RV (unsigned long). The library is already initialised by
    // the vault in this process, and dlopen returns the same instance.
    unsafe {
        let library = libloading::Library::new(MODULE).unwrap();
        let close: libloading::Symbol<unsafe extern "C" fn(std::ffi::c_ulong) -> std::ffi::c_ulong> =
            library.get(b"C_CloseSession").unwrap();
        assert_eq!(close(handle as std::ffi::c_ulong), 0, "C_CloseSession failed");
    }
}

#[test]
fn eight_threads_survive_closed_sessions() {
    let vault = Arc::new(softhsm::open_vault(LABEL_KILL, KeyMode::Wrapped, 8));
    let params = TotpParams::default();
    let seed = Seed::from_bytes(RFC4226_SEED.to_vec()).unwrap();
    let sealed = Arc::new(vault.seal_wrapped(&seed, Algorithm::SHA1).unwrap());
    let expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"];

    // Phase one: eight threads verify at once. Then every thread waits
    // while three of the pool's sessions are closed behind the vault's back
    // (SoftHSM 2.6 crashes if a session is closed during an operation on
    // it), and phase two runs on the same pool.
    let pause = Arc::new(std::sync::Barrier::new(9));
    let resume = Arc::new(std::sync::Barrier::new(9));
    let threads: Vec<_> = (0..8u64)
        .map(|thread| {
            let (vault, sealed, pause, resume) = (vault.clone(), sealed.clone(), pause.clone(), resume.clone());
            std::thread::spawn(move || {
                for round in 0..400u64 {
                    if round == 200 {
                        pause.wait();
                        resume.wait();
                    }
                    let counter = (round + thread) % 10;
                    let code = expected[counter as usize];
                    let found = vault
                        .verify(&sealed, &params, code, counter * 30, 0, None)
                        .unwrap_or_else(|e| panic!("thread {thread} round {round}: {e}"));
                    assert_eq!(found.map(|s| s.0), Some(counter), "thread {thread} round {round}");
                }
            })
        })
        .collect();
    pause.wait();
    let before = vault.session_handles();
    assert_eq!(before.len(), 8);
    for handle in &before[..3] {
        close_session(*handle);
    }
    resume.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    let after = vault.session_handles();
    assert!(!after.is_empty(), "the pool has sessions again");
    assert_ne!(before, after, "the closed sessions were replaced");
    // The vault still works after every session was replaced.
    assert!(vault.verify(&sealed, &params, "755224", 0, 0, None).unwrap().is_some());
}

#[test]
fn record_mac_detects_changes() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 1);
    let tag = vault.mac(b"alice|record").unwrap();
    assert!(vault.verify_mac(b"alice|record", &tag).unwrap());
    assert!(!vault.verify_mac(b"mallory|record", &tag).unwrap());
    assert!(!vault.verify_mac(b"alice|record", &tag[..31]).unwrap());
}

#[test]
fn blob_encryption_binds_aad() {
    let vault = softhsm::open_vault(LABEL_MAIN, KeyMode::Wrapped, 1);
    let blob = vault.encrypt(b"sessionid=abc", b"ticket-1").unwrap();
    assert_eq!(&vault.decrypt(&blob, b"ticket-1").unwrap()[..], b"sessionid=abc");
    let wrong_aad = vault.decrypt(&blob, b"ticket-2");
    assert!(matches!(wrong_aad, Err(HsmError::DecryptFailed)), "{:?}", wrong_aad.err());
    let mut altered = blob.clone();
    *altered.last_mut().unwrap() ^= 1;
    assert!(matches!(vault.decrypt(&altered, b"ticket-1"), Err(HsmError::DecryptFailed)));
    assert!(matches!(vault.encrypt(b"x", b""), Err(HsmError::EmptyAad)));
}

fn open_error(options: VaultOptions, pin: &str) -> HsmError {
    softhsm::in_process();
    match Vault::open(&options, &Secret::new(pin.into())) {
        Ok(_) => panic!("opening the vault succeeded"),
        Err(err) => err,
    }
}

fn options(label: &str) -> VaultOptions {
    VaultOptions { module: MODULE.into(), token_label: label.into(), key_mode: KeyMode::Wrapped, pool_size: 1 }
}

#[test]
fn wrong_pin_is_clear_error() {
    let err = open_error(options(LABEL_FRESH), "0000-wrong");
    assert!(matches!(err, HsmError::WrongPin { .. }), "{err}");
    assert!(err.to_string().contains("rejected the user PIN"), "{err}");
    assert!(!err.to_string().contains("0000-wrong"), "{err}");
}

#[test]
fn missing_token_label_is_clear_error() {
    let err = open_error(options("no-such-token"), USER_PIN);
    let text = err.to_string();
    assert!(text.contains("no-such-token"), "{text}");
    assert!(text.contains("--init-token"), "{text}");
}

#[test]
fn missing_module_is_clear_error() {
    let mut options = options(LABEL_MAIN);
    options.module = "/x/libsofthsm2.so".into();
    let text = open_error(options, USER_PIN).to_string();
    assert!(text.contains("/x/libsofthsm2.so"), "{text}");
}

#[test]
fn malformed_and_short_secrets_are_clear_errors() {
    let text = Seed::from_base32("JBSWY3DP!HPK3PXP").unwrap_err().to_string();
    assert!(text.contains("'!'"), "{text}");
    let text = Seed::from_base32("JBSWY3DPEHPK3PQ").unwrap_err().to_string();
    assert!(text.contains("72 bits"), "{text}");
}
