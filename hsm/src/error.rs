//! The error type of the HSM vault.

use cryptoki::error::{Error as CryptokiError, RvError};

/// A failed vault operation.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The PKCS#11 library could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {module}: {source}; check hsm.module and that the library matches this machine")]
    Module {
        module: String,
        #[source]
        source: CryptokiError,
    },

    /// No slot has a token with the configured label.
    #[error("no token labelled {label:?} found (tokens present: {present}); create it with `softhsm2-util --init-token --free --label {label}` or fix hsm.token_label")]
    TokenNotFound { label: String, present: String },

    /// The token rejected the user PIN.
    #[error("the token {label:?} rejected the user PIN; check the variable or file named by hsm.pin_env or hsm.pin_file")]
    WrongPin { label: String },

    /// The token is locked after too many wrong PINs.
    #[error("the user PIN of token {label:?} is locked; reset it with the token's security officer PIN")]
    PinLocked { label: String },

    /// A key that `otpgate hsm init` creates is missing.
    #[error("key {label:?} not found in the token; run `otpgate hsm init`")]
    KeyMissing { label: &'static str },

    /// A token-mode seed object for the member is missing.
    #[error("no seed object found in the token for this member; the member must enroll again")]
    SeedMissing,

    /// The sealed seed or blob is malformed or was made by another key.
    #[error("sealed data is malformed: {0}")]
    Malformed(&'static str),

    /// A base32 secret could not be decoded.
    #[error("invalid base32 secret: {0}; use the letters A-Z and digits 2-7, spaces and = padding are allowed")]
    InvalidBase32(String),

    /// A seed is too short or too long.
    #[error("seed of {bits} bits is outside {min_bits}..={max_bits} bits; use a seed of at least 80 bits (16 base32 characters)")]
    SeedLength { bits: usize, min_bits: usize, max_bits: usize },

    /// An encryption call had empty additional authenticated data.
    #[error("additional authenticated data must not be empty")]
    EmptyAad,

    /// Decryption failed: the blob was altered or belongs to other AAD.
    #[error("decryption failed: the blob was altered or was sealed for another context")]
    DecryptFailed,

    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {operation} failed: {source}")]
    Pkcs11 {
        operation: &'static str,
        #[source]
        source: CryptokiError,
    },
}

impl HsmError {
    pub(crate) fn pkcs11(operation: &'static str) -> impl FnOnce(CryptokiError) -> HsmError {
        move |source| HsmError::Pkcs11 { operation, source }
    }

    /// Reports whether the token itself is unavailable (removed, its keys
    /// gone, the library reset), which a new session alone does not fix.
    pub(crate) fn is_token_gone(&self) -> bool {
        match self {
            HsmError::KeyMissing { .. } | HsmError::TokenNotFound { .. } => true,
            HsmError::Pkcs11 {
                source: CryptokiError::Pkcs11(rv, _),
                ..
            } => matches!(
                rv,
                RvError::TokenNotPresent
                    | RvError::DeviceRemoved
                    | RvError::SlotIdInvalid
                    | RvError::CryptokiNotInitialized
                    | RvError::DeviceError
            ),
            _ => false,
        }
    }

    /// Reports whether the session that ran the operation may no longer be
    /// usable, so the operation should be retried on a fresh session.
    /// SoftHSM 2.6 returns `CKR_GENERAL_ERROR` to an operation whose
    /// session was closed by another thread while it ran, and
    /// handle or operation-state errors when a cached key handle went
    /// stale with it, so those codes count too.
    pub(crate) fn is_stale_session(&self) -> bool {
        match self {
            HsmError::Pkcs11 {
                source: CryptokiError::Pkcs11(rv, _),
                ..
            } => matches!(
                rv,
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::DeviceError
                    | RvError::GeneralError
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::UserNotLoggedIn
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid
                    | RvError::UnwrappingKeyHandleInvalid
                    | RvError::WrappingKeyHandleInvalid
                    | RvError::KeyFunctionNotPermitted
                    | RvError::OperationActive
                    | RvError::OperationNotInitialized
            ),
            _ => false,
        }
    }
}
