//! Seeds in host memory and their sealed form.

use std::fmt;

use otpgate_config::Algorithm;
use zeroize::Zeroizing;

use crate::HsmError;

/// Shortest seed accepted: 80 bits, the length older 2FA systems used.
pub const MIN_SEED_BYTES: usize = 10;
/// Longest seed accepted: one SHA-512 block.
pub const MAX_SEED_BYTES: usize = 128;

/// A TOTP seed in host memory. It exists only during enrollment or import
/// and is zeroized on drop.
pub struct Seed(Zeroizing<Vec<u8>>);

impl Seed {
    /// Wraps seed bytes; 10 to 128 bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Seed, HsmError> {
        let bytes = Zeroizing::new(bytes);
        if !(MIN_SEED_BYTES..=MAX_SEED_BYTES).contains(&bytes.len()) {
            return Err(HsmError::SeedLength {
                bits: bytes.len() * 8,
                min_bits: MIN_SEED_BYTES * 8,
                max_bits: MAX_SEED_BYTES * 8,
            });
        }
        Ok(Seed(bytes))
    }

    /// Decodes a base32 secret as authenticator apps and older systems
    /// print it: any letter case, with or without `=` padding, with spaces
    /// or hyphens between groups.
    pub fn from_base32(text: &str) -> Result<Seed, HsmError> {
        let cleaned: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect::<String>()
                .trim_end_matches('=')
                .to_string(),
        );
        if cleaned.is_empty() {
            return Err(HsmError::InvalidBase32("the secret is empty".into()));
        }
        if let Some(bad) = cleaned.chars().find(|c| !matches!(c, 'A'..='Z' | '2'..='7')) {
            return Err(HsmError::InvalidBase32(format!("character {bad:?} is not base32")));
        }
        // Leftover bits after the last whole byte are ignored, as most
        // authenticator apps do, so a 26-character secret decodes to 16 bytes.
        let mut spec = data_encoding::BASE32_NOPAD.specification();
        spec.check_trailing_bits = false;
        let lenient = spec.encoding().expect("base32 specification is valid");
        let bytes = lenient.decode(cleaned.as_bytes()).map_err(|_| {
            HsmError::InvalidBase32(format!(
                "{} characters is not a valid base32 length",
                cleaned.len()
            ))
        })?;
        Seed::from_bytes(bytes)
    }

    /// Returns the seed as base32 without padding, for display once at enrollment.
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&self.0))
    }

    /// Returns the raw seed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the key value the HSM gets: the seed, zero-padded to the
    /// shortest HMAC key SoftHSM accepts for `algorithm`. RFC 2104 pads keys
    /// shorter than the hash block size with zeros, so the HMAC is unchanged.
    pub(crate) fn padded_key(&self, algorithm: Algorithm) -> Zeroizing<Vec<u8>> {
        let mut key = Zeroizing::new(self.0.to_vec());
        let min = min_hmac_key_bytes(algorithm);
        if key.len() < min {
            key.resize(min, 0);
        }
        key
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seed(<{} bytes redacted>)", self.0.len())
    }
}

/// Shortest HMAC key SoftHSM 2.6 accepts: the hash output length.
pub(crate) fn min_hmac_key_bytes(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::SHA1 => 20,
        Algorithm::SHA256 => 32,
        Algorithm::SHA512 => 64,
    }
}

/// A seed as the gateway stores it: never the seed itself.
#[derive(Clone, PartialEq, Eq)]
pub enum SealedSeed {
    /// The seed wrapped with the token's wrapping key (`CKM_AES_KEY_WRAP_PAD`).
    Wrapped(Vec<u8>),
    /// The `CKA_ID` of a non-extractable token object holding the seed.
    Token([u8; 16]),
}

const FORMAT_WRAPPED: u8 = 1;
const FORMAT_TOKEN: u8 = 2;

impl SealedSeed {
    /// Serialises to bytes for the enrollment record: a format byte, then the payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (format, payload): (u8, &[u8]) = match self {
            SealedSeed::Wrapped(blob) => (FORMAT_WRAPPED, blob),
            SealedSeed::Token(id) => (FORMAT_TOKEN, id),
        };
        let mut out = Vec::with_capacity(1 + payload.len());
        out.push(format);
        out.extend_from_slice(payload);
        out
    }

    /// Parses bytes made by [`SealedSeed::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedSeed, HsmError> {
        match bytes.split_first() {
            Some((&FORMAT_WRAPPED, blob)) if blob.len() >= 24 && blob.len() % 8 == 0 => {
                Ok(SealedSeed::Wrapped(blob.to_vec()))
            }
            Some((&FORMAT_TOKEN, id)) => id
                .try_into()
                .map(SealedSeed::Token)
                .map_err(|_| HsmError::Malformed("token seed id is not 16 bytes")),
            _ => Err(HsmError::Malformed("unknown sealed seed format")),
        }
    }
}

impl fmt::Debug for SealedSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealedSeed::Wrapped(blob) => write!(f, "SealedSeed::Wrapped({} bytes)", blob.len()),
            SealedSeed::Token(_) => f.write_str("SealedSeed::Token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn base32_accepts_case_padding_and_spaces() {
        let canonical = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        for text in [
            canonical,
            "gezdgnbvgy3tqojqgezdgnbvgy3tqojq",
            "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====",
            " gezd-gnbv-gy3t-qojq-gezd-gnbv-gy3t-qojq\n",
        ] {
            assert_eq!(Seed::from_base32(text).unwrap().as_bytes(), RFC_SEED, "{text}");
        }
    }

    #[test]
    fn base32_80_bit_seed_is_accepted() {
        let seed = Seed::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(seed.as_bytes().len(), 10);
    }

    #[test]
    fn base32_rejects_foreign_characters() {
        let err = Seed::from_base32("JBSWY3DPEHPK3PX1").unwrap_err().to_string();
        assert!(err.contains("'1'"), "{err}");
        assert!(Seed::from_base32("").is_err());
        assert!(Seed::from_base32("JBSW Y3DP ÉHPK").is_err());
    }

    #[test]
    fn seed_below_80_bits_is_rejected() {
        let err = Seed::from_base32("JBSWY3DPEHPK3PQ").unwrap_err().to_string();
        assert!(err.contains("80 bits"), "{err}");
    }

    #[test]
    fn padded_key_reaches_softhsm_minimum() {
        let seed = Seed::from_bytes(vec![7; 10]).unwrap();
        assert_eq!(seed.padded_key(Algorithm::SHA1).len(), 20);
        assert_eq!(seed.padded_key(Algorithm::SHA256).len(), 32);
        assert_eq!(seed.padded_key(Algorithm::SHA512).len(), 64);
        assert_eq!(&seed.padded_key(Algorithm::SHA1)[10..], &[0u8; 10]);
        let long = Seed::from_bytes(vec![7; 100]).unwrap();
        assert_eq!(long.padded_key(Algorithm::SHA1).len(), 100);
    }

    #[test]
    fn sealed_seed_round_trips() {
        let wrapped = SealedSeed::Wrapped(vec![1; 32]);
        assert_eq!(SealedSeed::from_bytes(&wrapped.to_bytes()).unwrap(), wrapped);
        let token = SealedSeed::Token([9; 16]);
        assert_eq!(SealedSeed::from_bytes(&token.to_bytes()).unwrap(), token);
        assert!(SealedSeed::from_bytes(&[3, 1, 2]).is_err());
        assert!(SealedSeed::from_bytes(&[]).is_err());
    }

    #[test]
    fn seed_debug_hides_bytes() {
        let seed = Seed::from_bytes(vec![0x41; 20]).unwrap();
        assert!(!format!("{seed:?}").contains("65"));
    }
}
