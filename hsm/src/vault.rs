//! The vault: seeds sealed and used inside the token.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags};

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use otpgate_config::{Algorithm, HsmSettings, KeyMode, Secret};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::keys::{self, HsmStatus, KeyRole};
use crate::pool::SessionPool;
use crate::seed::{SealedSeed, Seed};
use crate::totp::{self, TimeStep, TotpParams};
use crate::{context, HsmError};

/// A member's login name, as the application uses it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(pub String);

impl UserId {
    /// Returns the `CKA_ID` of the member's seed object in `token` mode: the first
    /// 16 bytes of SHA-256 over a domain label and the name.
    pub fn token_object_id(&self) -> [u8; 16] {
        let digest = Sha256::new()
            .chain_update(b"otpgate token seed\0")
            .chain_update(self.0.as_bytes())
            .finalize();
        digest[..16].try_into().expect("SHA-256 is 32 bytes")
    }
}

/// Settings of [`Vault::open`].
#[derive(Debug, Clone)]
pub struct VaultOptions {
    pub module: PathBuf,
    pub token_label: String,
    pub key_mode: KeyMode,
    pub pool_size: usize,
}

impl From<&HsmSettings> for VaultOptions {
    fn from(settings: &HsmSettings) -> Self {
        VaultOptions {
            module: settings.module.clone(),
            token_label: settings.token_label.clone(),
            key_mode: settings.key_mode,
            pool_size: settings.pool_size,
        }
    }
}

/// Handles of the long-lived keys, found once and dropped when a session
/// is replaced (handles may not survive `C_CloseAllSessions`).
#[derive(Default, Clone, Copy)]
struct KeyCache {
    wrapping: Option<ObjectHandle>,
    record: Option<ObjectHandle>,
    blob: Option<ObjectHandle>,
}

/// AES-GCM nonce length in bytes (96 bits, the length NIST SP 800-38D recommends).
const GCM_NONCE_BYTES: usize = 12;
/// AES-GCM tag length in bits.
const GCM_TAG_BITS: u64 = 128;

/// The seed vault on one PKCS#11 token. Safe to share between threads;
/// every call blocks on the token, so async callers run it on a blocking
/// thread.
pub struct Vault {
    pool: RwLock<Arc<SessionPool>>,
    /// Held for reading during every operation and for writing while the
    /// library is re-initialised: SoftHSM crashes if C_Finalize runs while
    /// another thread is inside a call.
    gate: RwLock<()>,
    last_recovery: Mutex<Option<Instant>>,
    options: VaultOptions,
    pin: Secret,
    mode: KeyMode,
    label: String,
    keys: Mutex<KeyCache>,
}

/// Shortest time between two re-initialisations of the PKCS#11 library,
/// so a token that stays away is not hammered.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

impl Vault {
    /// Loads the module, finds the token by label and logs in `pool_size`
    /// sessions with `pin`.
    pub fn open(options: &VaultOptions, pin: &Secret) -> Result<Vault, HsmError> {
        let context = context::shared(&options.module)?;
        let pool = open_pool(context, options, pin)?;
        Ok(Vault {
            pool: RwLock::new(Arc::new(pool)),
            gate: RwLock::new(()),
            last_recovery: Mutex::new(None),
            options: options.clone(),
            pin: pin.clone(),
            mode: options.key_mode,
            label: options.token_label.clone(),
            keys: Mutex::new(KeyCache::default()),
        })
    }

    /// Returns the key mode new seeds are sealed in.
    pub fn key_mode(&self) -> KeyMode {
        self.mode
    }

    /// Returns the id of the token's slot (slot ids change between SoftHSM runs).
    pub fn slot_id(&self) -> u64 {
        self.current_pool().slot().id()
    }

    fn current_pool(&self) -> Arc<SessionPool> {
        self.pool.read().expect("vault pool lock").clone()
    }

    /// Returns the PKCS#11 handles of the pool's sessions, for diagnostics
    /// and fault-injection tests that close a session under the vault.
    // CK_SESSION_HANDLE is u64 on Linux but u32 on Windows.
    #[allow(clippy::useless_conversion)]
    pub fn session_handles(&self) -> Vec<u64> {
        self.current_pool().handles().into_iter().map(u64::from).collect()
    }

    /// Runs `operation` on a pooled session. When the token has gone away
    /// (removed, or its objects vanished), the PKCS#11 library is
    /// re-initialised, the pool reopened, and `operation` runs once more,
    /// so the vault recovers by itself when the token returns.
    fn run<T>(&self, mut operation: impl FnMut(&Session, &Self) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let result = self.run_once(&mut operation);
        match result {
            Err(err) if err.is_token_gone() => {
                tracing::warn!(error = %err, token = %self.label, "HSM token unavailable; re-initialising the PKCS#11 library");
                self.recover()?;
                self.run_once(&mut operation)
            }
            other => other,
        }
    }

    fn run_once<T>(&self, operation: &mut impl FnMut(&Session, &Self) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let _gate = self.gate.read().expect("vault gate lock");
        let pool = self.current_pool();
        pool.with_session(
            |session| operation(session, self),
            || *self.keys.lock().expect("key cache lock") = KeyCache::default(),
        )
    }

    /// Finalises and re-initialises the library and opens a new pool.
    /// Waits for operations in flight; does nothing when another thread
    /// recovered less than a second ago.
    fn recover(&self) -> Result<(), HsmError> {
        let _gate = self.gate.write().expect("vault gate lock");
        let mut last = self.last_recovery.lock().expect("recovery lock");
        if last.is_some_and(|at| at.elapsed() < RECOVERY_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let context = self.current_pool().context();
        let _ = context.clone().finalize();
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(source) => {
                return Err(HsmError::Module {
                    module: self.options.module.display().to_string(),
                    source,
                })
            }
        }
        let pool = open_pool(context, &self.options, &self.pin)?;
        *self.pool.write().expect("vault pool lock") = Arc::new(pool);
        *self.keys.lock().expect("key cache lock") = KeyCache::default();
        tracing::info!(token = %self.label, "HSM token available again");
        Ok(())
    }

    fn key(&self, session: &Session, role: KeyRole) -> Result<ObjectHandle, HsmError> {
        let cached = {
            let cache = self.keys.lock().expect("key cache lock");
            match role {
                KeyRole::Wrapping => cache.wrapping,
                KeyRole::Record => cache.record,
                KeyRole::Blob => cache.blob,
            }
        };
        if let Some(handle) = cached {
            return Ok(handle);
        }
        let handle = keys::find(session, role)?.ok_or(HsmError::KeyMissing { label: role.label() })?;
        let mut cache = self.keys.lock().expect("key cache lock");
        match role {
            KeyRole::Wrapping => cache.wrapping = Some(handle),
            KeyRole::Record => cache.record = Some(handle),
            KeyRole::Blob => cache.blob = Some(handle),
        }
        Ok(handle)
    }

    /// Creates the wrapping, record and blob keys that do not exist yet.
    /// Idempotent. Returns the labels of the keys it created.
    pub fn init_keys(&self) -> Result<Vec<&'static str>, HsmError> {
        self.run(|session, _| {
            let mut created = Vec::new();
            for role in KeyRole::ALL {
                if keys::ensure(session, role)? {
                    created.push(role.label());
                }
            }
            Ok(created)
        })
    }

    /// Lists the keys and checks that every required mechanism is present.
    pub fn status(&self) -> Result<HsmStatus, HsmError> {
        let (info, mechanisms) = {
            let _gate = self.gate.read().expect("vault gate lock");
            let context = context_of(self)?;
            let slot = Slot::try_from(self.slot_id()).map_err(HsmError::pkcs11("slot id"))?;
            let info = context.get_token_info(slot).map_err(HsmError::pkcs11("C_GetTokenInfo"))?;
            let mechanisms = context
                .get_mechanism_list(slot)
                .map_err(HsmError::pkcs11("C_GetMechanismList"))?;
            (info, mechanisms)
        };
        let missing_mechanisms = keys::REQUIRED_MECHANISMS
            .iter()
            .filter(|(mechanism, _)| !mechanisms.contains(mechanism))
            .map(|(_, name)| *name)
            .collect();
        let keys = self.run(|session, _| {
            KeyRole::ALL
                .iter()
                .map(|role| Ok((*role, keys::find(session, *role)?.is_some())))
                .collect::<Result<Vec<_>, HsmError>>()
        })?;
        Ok(HsmStatus {
            token_label: info.label().trim().to_string(),
            manufacturer: info.manufacturer_id().trim().to_string(),
            model: info.model().trim().to_string(),
            serial: info.serial_number().trim().to_string(),
            keys,
            missing_mechanisms,
        })
    }

    /// Returns `len` bytes from the token's random number generator.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        self.run(|session, _| {
            let mut buffer = vec![0u8; len];
            session
                .generate_random_slice(&mut buffer)
                .map_err(HsmError::pkcs11("C_GenerateRandom"))?;
            Ok(buffer)
        })
    }

    /// Generates a new seed of `len` bytes with the token's random number
    /// generator, for display once at enrollment.
    pub fn generate_seed(&self, len: usize) -> Result<Seed, HsmError> {
        Seed::from_bytes(self.random(len)?)
    }

    /// Seals `seed` in wrapped form regardless of the key mode. Enrollment
    /// keeps this form until the member confirms a code, then calls
    /// [`Vault::commit`].
    pub fn seal_wrapped(&self, seed: &Seed, algorithm: Algorithm) -> Result<SealedSeed, HsmError> {
        self.run(|session, vault| {
            let wrapping_key = vault.key(session, KeyRole::Wrapping)?;
            let mut template = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Sign(true),
                Attribute::Value(seed.padded_key(algorithm).to_vec()),
            ];
            let created = session.create_object(&template);
            wipe_values(&mut template);
            let object = created.map_err(HsmError::pkcs11("C_CreateObject"))?;
            let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, object);
            destroy(session, object);
            Ok(SealedSeed::Wrapped(wrapped.map_err(HsmError::pkcs11("C_WrapKey"))?))
        })
    }

    /// Turns a seed from [`Vault::seal_wrapped`] into its stored form for
    /// `user` in the vault's key mode. In `token` mode this unwraps it into
    /// a non-extractable token object and removes the member's older one.
    pub fn commit(&self, user: &UserId, pending: SealedSeed) -> Result<SealedSeed, HsmError> {
        let blob = match (&pending, self.mode) {
            (SealedSeed::Wrapped(_), KeyMode::Wrapped) | (SealedSeed::Token(_), _) => return Ok(pending),
            (SealedSeed::Wrapped(blob), KeyMode::Token) => blob,
        };
        let id = user.token_object_id();
        self.run(|session, vault| {
            let older = find_token_seeds(session, &id)?;
            let wrapping_key = vault.key(session, KeyRole::Wrapping)?;
            let template = seed_object_template(true, Some(id));
            session
                .unwrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, blob, &template)
                .map_err(HsmError::pkcs11("C_UnwrapKey"))?;
            for handle in older {
                destroy(session, handle);
            }
            Ok(SealedSeed::Token(id))
        })
    }

    /// Seals `seed` for `user` in the vault's key mode: an import or a
    /// seed that needs no confirmation.
    pub fn seal(&self, user: &UserId, seed: &Seed, algorithm: Algorithm) -> Result<SealedSeed, HsmError> {
        let wrapped = self.seal_wrapped(seed, algorithm)?;
        self.commit(user, wrapped)
    }

    /// Removes the member's token-mode seed object, if any. Wrapped seeds
    /// have nothing in the token to remove.
    pub fn delete_token_seed(&self, user: &UserId) -> Result<usize, HsmError> {
        let id = user.token_object_id();
        self.run(|session, _| {
            let handles = find_token_seeds(session, &id)?;
            for handle in &handles {
                session.destroy_object(*handle).map_err(HsmError::pkcs11("C_DestroyObject"))?;
            }
            Ok(handles.len())
        })
    }

    /// Computes the HOTP code of `sealed` for `counter` inside the token.
    pub fn hotp(&self, sealed: &SealedSeed, params: &TotpParams, counter: u64) -> Result<String, HsmError> {
        let macs = self.hmacs(sealed, params.algorithm, &[TimeStep(counter)])?;
        Ok(totp::truncate(&macs[0], params.digits))
    }

    /// Checks `code` against the steps of the window around `unix_time`
    /// that are newer than `used`. Returns the newest matching step, or
    /// `None` when no step matches.
    ///
    /// A code that is not exactly `params.digits` ASCII digits returns
    /// `None` without any HSM call. One verification costs, in `wrapped`
    /// mode, one `C_UnwrapKey`, one `C_Sign` per candidate step and one
    /// `C_DestroyObject`; in `token` mode one object search and the signs.
    pub fn verify(
        &self,
        sealed: &SealedSeed,
        params: &TotpParams,
        code: &str,
        unix_time: u64,
        window: u64,
        used: Option<TimeStep>,
    ) -> Result<Option<TimeStep>, HsmError> {
        if !totp::is_well_formed(code, params.digits) {
            return Ok(None);
        }
        let steps = totp::candidate_steps(params.step_at(unix_time), window, used);
        if steps.is_empty() {
            return Ok(None);
        }
        let macs = self.hmacs(sealed, params.algorithm, &steps)?;
        // Every candidate is compared, so the time taken does not reveal
        // which step matched.
        let mut matched = None;
        for (step, mac) in steps.iter().zip(&macs) {
            let expected = totp::truncate(mac, params.digits);
            if totp::codes_equal(&expected, code) && matched.is_none() {
                matched = Some(*step);
            }
        }
        Ok(matched)
    }

    /// Computes HMAC(seed, counter) for each step, in order.
    fn hmacs(&self, sealed: &SealedSeed, algorithm: Algorithm, steps: &[TimeStep]) -> Result<Vec<Vec<u8>>, HsmError> {
        let mechanism = hmac_mechanism(algorithm);
        self.run(|session, vault| match sealed {
            SealedSeed::Wrapped(blob) => {
                let wrapping_key = vault.key(session, KeyRole::Wrapping)?;
                let template = seed_object_template(false, None);
                let key = session
                    .unwrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, blob, &template)
                    .map_err(HsmError::pkcs11("C_UnwrapKey"))?;
                let macs = sign_steps(session, &mechanism, key, steps);
                destroy(session, key);
                macs
            }
            SealedSeed::Token(id) => {
                let key = *find_token_seeds(session, id)?.first().ok_or(HsmError::SeedMissing)?;
                sign_steps(session, &mechanism, key, steps)
            }
        })
    }

    /// Computes HMAC-SHA256 of `data` with the record key.
    pub fn mac(&self, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.run(|session, vault| {
            let key = vault.key(session, KeyRole::Record)?;
            session
                .sign(&Mechanism::Sha256Hmac, key, data)
                .map_err(HsmError::pkcs11("C_Sign"))
        })
    }

    /// Reports whether `tag` is the record-key MAC of `data`, compared in
    /// constant time.
    pub fn verify_mac(&self, data: &[u8], tag: &[u8]) -> Result<bool, HsmError> {
        let expected = self.mac(data)?;
        Ok(expected.len() == tag.len() && bool::from(expected.ct_eq(tag)))
    }

    /// Encrypts `plaintext` with the blob key (AES-256-GCM) bound to `aad`,
    /// which must not be empty (SoftHSM 2.6 crashes on empty AAD). Returns
    /// nonce, ciphertext and tag in one buffer.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        if aad.is_empty() {
            return Err(HsmError::EmptyAad);
        }
        self.run(|session, vault| {
            let key = vault.key(session, KeyRole::Blob)?;
            let mut nonce = [0u8; GCM_NONCE_BYTES];
            session
                .generate_random_slice(&mut nonce)
                .map_err(HsmError::pkcs11("C_GenerateRandom"))?;
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into()).map_err(HsmError::pkcs11("GCM parameters"))?;
            let sealed = session
                .encrypt(&Mechanism::AesGcm(params), key, plaintext)
                .map_err(HsmError::pkcs11("C_Encrypt"))?;
            let mut out = Vec::with_capacity(GCM_NONCE_BYTES + sealed.len());
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            Ok(out)
        })
    }

    /// Decrypts a buffer from [`Vault::encrypt`] with the same `aad`.
    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, HsmError> {
        if aad.is_empty() {
            return Err(HsmError::EmptyAad);
        }
        if blob.len() < GCM_NONCE_BYTES + (GCM_TAG_BITS as usize / 8) {
            return Err(HsmError::Malformed("encrypted blob is shorter than nonce and tag"));
        }
        let (nonce, ciphertext) = blob.split_at(GCM_NONCE_BYTES);
        self.run(|session, vault| {
            let key = vault.key(session, KeyRole::Blob)?;
            let mut iv: [u8; GCM_NONCE_BYTES] = nonce.try_into().expect("split at nonce length");
            let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into()).map_err(HsmError::pkcs11("GCM parameters"))?;
            match session.decrypt(&Mechanism::AesGcm(params), key, ciphertext) {
                Ok(plain) => Ok(zeroize::Zeroizing::new(plain)),
                // SoftHSM 2.6 reports a GCM tag mismatch as CKR_GENERAL_ERROR.
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::EncryptedDataInvalid
                    | cryptoki::error::RvError::EncryptedDataLenRange
                    | cryptoki::error::RvError::GeneralError,
                    _,
                )) => Err(HsmError::DecryptFailed),
                Err(other) => Err(HsmError::pkcs11("C_Decrypt")(other)),
            }
        })
    }

    /// Returns the token label, for log lines and errors.
    pub fn token_label(&self) -> &str {
        &self.label
    }
}

fn context_of(vault: &Vault) -> Result<cryptoki::context::Pkcs11, HsmError> {
    Ok(vault.current_pool().context())
}

/// Finds the token by label and opens a logged-in pool on it.
fn open_pool(context: cryptoki::context::Pkcs11, options: &VaultOptions, pin: &Secret) -> Result<SessionPool, HsmError> {
    let slot = find_slot(&context, &options.token_label)?;
    let pin = AuthPin::new(pin.expose().into());
    SessionPool::open(context, slot, options.token_label.clone(), pin, options.pool_size.max(1))
}

/// Finds the slot whose token has `label`. Slot numbers are not stable in
/// SoftHSM, so the label is the only reliable name.
fn find_slot(context: &cryptoki::context::Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let slots = context
        .get_slots_with_token()
        .map_err(HsmError::pkcs11("C_GetSlotList"))?;
    let mut present = Vec::new();
    for slot in slots {
        let info = context.get_token_info(slot).map_err(HsmError::pkcs11("C_GetTokenInfo"))?;
        let token_label = info.label().trim_end().to_string();
        if token_label == label {
            return Ok(slot);
        }
        if info.token_initialized() {
            present.push(format!("{token_label:?}"));
        }
    }
    Err(HsmError::TokenNotFound {
        label: label.to_string(),
        present: if present.is_empty() { "none".into() } else { present.join(", ") },
    })
}

/// Returns the template every seed key object gets, unwrapped per
/// verification (`token` false) or stored per member (`token` true with
/// an id): sensitive, never extractable, usable for `C_Sign` only.
pub fn seed_object_template(token: bool, id: Option<[u8; 16]>) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Verify(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    if let Some(id) = id {
        template.push(Attribute::Id(id.to_vec()));
    }
    template
}

fn find_token_seeds(session: &Session, id: &[u8; 16]) -> Result<Vec<ObjectHandle>, HsmError> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(HsmError::pkcs11("C_FindObjects"))
}

fn sign_steps(
    session: &Session,
    mechanism: &Mechanism,
    key: ObjectHandle,
    steps: &[TimeStep],
) -> Result<Vec<Vec<u8>>, HsmError> {
    steps
        .iter()
        .map(|step| {
            session
                .sign(mechanism, key, &step.0.to_be_bytes())
                .map_err(HsmError::pkcs11("C_Sign"))
        })
        .collect()
}

fn hmac_mechanism(algorithm: Algorithm) -> Mechanism<'static> {
    match algorithm {
        Algorithm::SHA1 => Mechanism::Sha1Hmac,
        Algorithm::SHA256 => Mechanism::Sha256Hmac,
        Algorithm::SHA512 => Mechanism::Sha512Hmac,
    }
}

/// Destroys a session object, logging (not returning) a failure: session
/// objects vanish with their session anyway.
fn destroy(session: &Session, object: ObjectHandle) {
    if let Err(err) = session.destroy_object(object) {
        tracing::warn!(error = %err, "destroying a temporary key object failed");
    }
}

/// Overwrites key values in a template once the token has copied them.
fn wipe_values(template: &mut [Attribute]) {
    for attribute in template {
        if let Attribute::Value(bytes) = attribute {
            bytes.zeroize();
        }
    }
}
