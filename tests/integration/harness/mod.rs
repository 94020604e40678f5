//! Starting and stopping the real components the tests run against.

pub mod softhsm;
pub mod totp;

pub use softhsm::SoftHsm;
