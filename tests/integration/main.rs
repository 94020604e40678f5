//! End-to-end tests against real components: a SoftHSM token and a Redis
//! server that the harness starts on its own ports and directories, the
//! demo application, the gateway, and a real HTTP client.
//!
//! All tests live in this one binary so that pingora is linked once.

mod harness;
mod admin;
mod gateway_enroll;
mod gateway_login;
mod gateway_tls;
mod hostile;
mod hsm_vault;
mod multi_instance;
