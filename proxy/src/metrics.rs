//! Prometheus counters of login outcomes.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};

/// Login and second-factor outcomes by name (`verified`, `code_rejected`,
/// `locked_out`, ...), the same names as the `outcome` log field.
pub static OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("otpgate_outcomes_total", "Login and second-factor outcomes", &["outcome"])
        .expect("metric registers once")
});

/// HSM operations by kind (`totp_verify`), to show which requests reach the token.
pub static HSM_OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("otpgate_hsm_operations_total", "TOTP verifications sent to the HSM", &["operation"])
        .expect("metric registers once")
});

/// Counts one outcome.
pub fn outcome(name: &str) {
    OUTCOMES.with_label_values(&[name]).inc();
}

/// Returns every registered metric in the Prometheus text format.
pub fn render() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode_to_string(&prometheus::gather())
        .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
}
