//! TOTP seeds sealed in a PKCS#11 token, with the HMAC computed inside it.
//!
//! After enrollment a member's seed never exists in the gateway's memory:
//! it is either wrapped by a key that never leaves the token (`wrapped`
//! mode) or kept as a non-extractable token object (`token` mode), and the
//! HOTP values of RFC 4226 are computed with `C_Sign` inside the token.
#![forbid(unsafe_code)]

mod context;
mod error;
mod keys;
mod pool;
mod seed;
mod totp;
mod vault;

pub use error::HsmError;
pub use keys::{HsmStatus, KeyRole, REQUIRED_MECHANISMS};
pub use otpgate_config::{Algorithm, KeyMode};
pub use seed::{SealedSeed, Seed, MAX_SEED_BYTES, MIN_SEED_BYTES};
pub use totp::{is_well_formed, TimeStep, TotpParams};
pub use vault::{seed_object_template, UserId, Vault, VaultOptions};
