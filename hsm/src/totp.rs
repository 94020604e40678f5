//! TOTP arithmetic of RFC 4226 and RFC 6238 around an HMAC computed elsewhere.

use otpgate_config::Algorithm;
use subtle::ConstantTimeEq;

/// A TOTP time step: `floor(unix_time / period)`. 64-bit, as RFC 6238 requires
/// for times after 2038.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeStep(pub u64);

/// The parameters of one member's TOTP seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpParams {
    pub algorithm: Algorithm,
    /// Code length, 6 to 8.
    pub digits: u32,
    /// Step length in seconds, at least 1.
    pub period: u64,
}

impl Default for TotpParams {
    /// SHA-1, 6 digits, 30 seconds: the values every authenticator app honours.
    fn default() -> Self {
        TotpParams {
            algorithm: Algorithm::SHA1,
            digits: 6,
            period: 30,
        }
    }
}

impl TotpParams {
    /// Returns the time step that contains `unix_time`.
    pub fn step_at(&self, unix_time: u64) -> TimeStep {
        TimeStep(unix_time / self.period.max(1))
    }
}

/// Reports whether `code` is exactly `digits` ASCII digits. Anything else
/// (other digit scripts, signs, spaces, a missing leading zero) is rejected
/// before any HSM call.
pub fn is_well_formed(code: &str, digits: u32) -> bool {
    code.len() == digits as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// Returns the steps worth checking, newest first: the window around
/// `now`, without steps at or below `used`.
pub(crate) fn candidate_steps(now: TimeStep, window: u64, used: Option<TimeStep>) -> Vec<TimeStep> {
    let first = now.0.saturating_sub(window);
    let last = now.0.saturating_add(window);
    (first..=last)
        .rev()
        .map(TimeStep)
        .filter(|step| used.is_none_or(|used| *step > used))
        .collect()
}

/// Applies the dynamic truncation of RFC 4226 section 5.3 to an HMAC value
/// and formats the result with leading zeros.
pub(crate) fn truncate(mac: &[u8], digits: u32) -> String {
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    let modulus = 10u32.pow(digits);
    format!("{:0width$}", binary % modulus, width = digits as usize)
}

/// Compares two codes in time that does not depend on where they differ.
pub(crate) fn codes_equal(expected: &str, submitted: &str) -> bool {
    expected.len() == submitted.len() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_needs_exact_ascii_digits() {
        assert!(is_well_formed("012345", 6));
        assert!(!is_well_formed("12345", 6));
        assert!(!is_well_formed("0012345", 6));
        assert!(!is_well_formed("12345 ", 6));
        assert!(!is_well_formed("١٢٣٤٥٦", 6));
        assert!(!is_well_formed("123456abc", 6));
        assert!(!is_well_formed("+12345", 6));
        assert!(is_well_formed("12345678", 8));
    }

    #[test]
    fn candidates_skip_used_steps_newest_first() {
        let steps = candidate_steps(TimeStep(100), 1, None);
        assert_eq!(steps, vec![TimeStep(101), TimeStep(100), TimeStep(99)]);
        let steps = candidate_steps(TimeStep(100), 1, Some(TimeStep(100)));
        assert_eq!(steps, vec![TimeStep(101)]);
        assert!(candidate_steps(TimeStep(100), 1, Some(TimeStep(101))).is_empty());
        assert_eq!(candidate_steps(TimeStep(0), 1, None), vec![TimeStep(1), TimeStep(0)]);
    }

    #[test]
    fn truncation_matches_rfc4226_example() {
        // RFC 4226 section 5.4: this HMAC-SHA-1 value truncates to 872921.
        let mac = [
            0x1f, 0x86, 0x98, 0x69, 0x0e, 0x02, 0xca, 0x16, 0x61, 0x85, 0x50, 0xef, 0x7f, 0x19,
            0xda, 0x8e, 0x94, 0x5b, 0x55, 0x5a,
        ];
        assert_eq!(truncate(&mac, 6), "872921");
    }

    #[test]
    fn codes_equal_requires_same_length() {
        assert!(codes_equal("012345", "012345"));
        assert!(!codes_equal("012345", "12345"));
        assert!(!codes_equal("012345", "012346"));
    }
}
