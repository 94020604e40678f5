//! The pingora proxy that enforces TOTP for an unchanged web application:
//! path canonicalisation, login interception, the challenge page, session
//! enforcement, and the Redis store behind them.
#![forbid(unsafe_code)]

mod account;
mod challenge;
mod enforce;
mod flag_cache;
pub mod admin;
mod app_login;
pub mod backup;
pub mod client_ip;
pub mod cookies;
pub mod gateway;
mod headers;
mod inject;
mod login;
pub mod metrics;
pub mod otpauth;
pub mod pages;
pub mod path;
pub mod record;
pub mod store;

pub use gateway::Gateway;
pub use record::EnrollmentRecord;
pub use store::Store;
