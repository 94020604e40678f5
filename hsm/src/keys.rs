//! The gateway's long-lived keys in the token: creation, lookup and status.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::HsmError;

/// One of the keys that `otpgate hsm init` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// AES-256, wraps and unwraps member seeds.
    Wrapping,
    /// HMAC-SHA256, authenticates enrollment records.
    Record,
    /// AES-256, encrypts small blobs (held cookies) with AES-GCM.
    Blob,
}

impl KeyRole {
    /// Every role, in creation order.
    pub const ALL: [KeyRole; 3] = [KeyRole::Wrapping, KeyRole::Record, KeyRole::Blob];

    /// Returns the `CKA_LABEL` of the key.
    pub fn label(self) -> &'static str {
        match self {
            KeyRole::Wrapping => "otpgate-wrapping-key",
            KeyRole::Record => "otpgate-record-key",
            KeyRole::Blob => "otpgate-blob-key",
        }
    }

    fn template(self) -> (Mechanism<'static>, Vec<Attribute>) {
        let mut template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(self.label().as_bytes().to_vec()),
            Attribute::ValueLen(32.into()),
        ];
        let mechanism = match self {
            KeyRole::Wrapping => {
                template.extend([
                    Attribute::Wrap(true),
                    Attribute::Unwrap(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                ]);
                Mechanism::AesKeyGen
            }
            KeyRole::Record => {
                template.extend([
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Sign(true),
                    Attribute::Verify(true),
                ]);
                Mechanism::GenericSecretKeyGen
            }
            KeyRole::Blob => {
                template.extend([
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                ]);
                Mechanism::AesKeyGen
            }
        };
        (mechanism, template)
    }
}

/// Finds the one secret key with the label of `role`.
pub(crate) fn find(session: &Session, role: KeyRole) -> Result<Option<ObjectHandle>, HsmError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(role.label().as_bytes().to_vec()),
        ])
        .map_err(HsmError::pkcs11("C_FindObjects"))?;
    Ok(handles.first().copied())
}

/// Creates the key of `role` unless it exists. Returns true if it was created.
pub(crate) fn ensure(session: &Session, role: KeyRole) -> Result<bool, HsmError> {
    if find(session, role)?.is_some() {
        return Ok(false);
    }
    let (mechanism, template) = role.template();
    session
        .generate_key(&mechanism, &template)
        .map_err(HsmError::pkcs11("C_GenerateKey"))?;
    Ok(true)
}

/// Mechanisms the gateway needs, with what each is for.
pub const REQUIRED_MECHANISMS: [(MechanismType, &str); 7] = [
    (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
    (MechanismType::AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"),
    (MechanismType::AES_GCM, "CKM_AES_GCM"),
    (MechanismType::GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN"),
    (MechanismType::SHA1_HMAC, "CKM_SHA_1_HMAC"),
    (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC"),
    (MechanismType::SHA512_HMAC, "CKM_SHA512_HMAC"),
];

/// The token's state, as `otpgate hsm status` prints it.
#[derive(Debug, Clone)]
pub struct HsmStatus {
    pub token_label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    /// Each key role with whether its key exists.
    pub keys: Vec<(KeyRole, bool)>,
    /// Names of required mechanisms the token lacks.
    pub missing_mechanisms: Vec<&'static str>,
}

impl HsmStatus {
    /// Reports whether every key exists and every mechanism is present.
    pub fn is_ready(&self) -> bool {
        self.keys.iter().all(|(_, present)| *present) && self.missing_mechanisms.is_empty()
    }
}
