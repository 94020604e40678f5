//! Starting and stopping the real components the tests run against.

pub mod qr;
pub mod services;
pub mod softhsm;
pub mod stack;
pub mod totp;
